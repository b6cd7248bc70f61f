"""``python -m lca_cli``: the ``lca`` command (also what ``torchrun ... -m lca_cli compute RUN`` runs)."""

from lca_cli.cli.app import main

if __name__ == "__main__":
    main()
