#compdef offline-cli

_offline_cli_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _OFFLINE_CLI_COMPLETE=complete_zsh offline-cli)
}

compdef _offline_cli_completion offline-cli
