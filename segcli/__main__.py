from segcli.cli.app import main

if __name__ == "__main__":  # not when `segcli tune --workers N` starts its workers (multiprocessing's spawn)
    main()
