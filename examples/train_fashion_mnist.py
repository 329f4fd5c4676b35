"""Train the small CNN on Fashion-MNIST with SGD, SAM and USAM and compare them (Python API of ``samkit train``).

    python examples/train_fashion_mnist.py                      # 5000 training images, 2 epochs each (~1-2 min)
    python examples/train_fashion_mnist.py --subset 0 --epochs 1 --threads 2   # the full training set

Needs Fashion-MNIST: ``sudo apt-get install dataset-fashion-mnist`` or ``SAMKIT_DATA_DIR=DIR`` holding the four
``*-ubyte.gz`` files. Each run writes ``metrics.csv``, ``checkpoint.pt`` and ``summary.json`` under ``--out``.
The same from the shell: ``samkit train --dataset fashion-mnist --model cnn --optimizer sam --epochs 1``.
"""

from __future__ import annotations

import argparse

from samkit.data import DataError, load_fashion_mnist
from samkit.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn", choices=("mlp", "cnn", "resnet20"))
    p.add_argument("--subset", type=int, default=5000, help="training images (0: all 60000)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--out", default="runs/example")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    args = p.parse_args()
    try:
        data = load_fashion_mnist()  # read and checksum-verified once, shared by the three runs
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{'optimizer':10s} {'test acc':>9s} {'λmax':>8s} {'‖ε‖':>8s} {'status':>10s}")
    for opt in ("sgd", "sam", "usam"):
        cfg = TrainConfig(
            dataset="fashion-mnist",
            model=args.model,
            optimizer=opt,
            rho=args.rho,
            lr=args.lr,
            epochs=args.epochs,
            subset=args.subset or None,
            sharpness_every=args.epochs,
            out=f"{args.out}/{opt}",
            quiet=True,
            progress=False,
            threads=args.threads,
        )
        s = train(cfg, data=data)
        eps = s["history"][-1]["eps_norm"]
        eig = s["final_top_eigenvalue"]
        acc = s["final_test_acc"]
        print(
            f"{opt:10s} {acc if acc is None else f'{acc:.4f}':>9} {'-' if eig is None else f'{eig:.3g}':>8} "
            f"{eps:8.3g} {s['status']:>10s}"
        )


if __name__ == "__main__":
    main()
