"""``python -m pipeline.train encoder|decoder``: the same commands as ``dprdm train``."""

from pipeline.cli_train import train_app

if __name__ == "__main__":
    train_app(prog_name="python -m pipeline.train")
