"""``python -m persona4rec``: the ``p4r`` command (how a submitted job runs a stage on a cluster)."""

from persona4rec.cli import main

if __name__ == "__main__":
    main()
