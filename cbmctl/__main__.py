"""`python -m cbmctl ...`; also the entry point for `torchrun -m cbmctl embed ...`."""
from cbmctl.cli import main

if __name__ == "__main__":
    main()
