from segcli.cli.app import run

run()
