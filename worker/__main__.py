"""`python -m worker`: the same command line as `oms-cleanup`."""

from worker.cli import main

if __name__ == "__main__":
    main()
