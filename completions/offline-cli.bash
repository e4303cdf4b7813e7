# bash completion for offline-cli: source this file (README.md, "Shell completion").
# Written by `make completions` (docs/generate.py); offline-cli answers each Tab itself.
_offline_cli_completion() {
    local IFS=$'\n' i word cur prefix
    local -a words=("${COMP_WORDS[0]}")
    for ((i = 1; i <= COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ $COMP_WORDBREAKS == *:* && ${#words[@]} -gt 1 && -n $word ]] &&
            [[ $word == ":" || ${COMP_WORDS[i - 1]} == ":" ]]; then
            words[${#words[@]} - 1]+=$word
        else
            words+=("$word")
        fi
    done
    COMPREPLY=($(env COMP_WORDS="${words[*]}" COMP_CWORD=$((${#words[@]} - 1)) \
        _OFFLINE_CLI_COMPLETE=complete_bash "$1"))
    cur=${words[${#words[@]} - 1]}
    if [[ $COMP_WORDBREAKS == *:* && $cur == *:* ]]; then
        prefix=${cur%"${cur##*:}"}
        for i in "${!COMPREPLY[@]}"; do
            COMPREPLY[i]=${COMPREPLY[i]#"$prefix"}
        done
    fi
    return 0
}

complete -o default -F _offline_cli_completion offline-cli
