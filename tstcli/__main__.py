from tstcli.cli.app import main

main()
