"""Classifier benchmark: the default resnet18_small on the 16 px digits, timed on CPU, next to sklearn baselines.

Trains ``ClassifierConfig()`` (the library default) on the real digits train split and scores it on the real
test split; the issue asks for ≥95% in under a minute on 2 CPU cores. The same split is given to two
reference classifiers from scikit-learn on raw pixels (logistic regression and an RBF SVM) for scale. With
``--repeat`` the default config is trained again with the same seed to confirm the accuracy repeats.

    python benchmarks/bench_classifier.py [--threads 2] [--repeat] [--epochs N] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2 cores)")
    parser.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    parser.add_argument("--repeat", action="store_true", help="train twice with the same seed; compare")
    parser.add_argument("--data", type=Path, default=None, help="folder with digits train/ and test/ (else imported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.svm import SVC

    from imgsynth.classifier import ClassifierConfig, evaluate_classifier, train_classifier
    from imgsynth.imageset import ImageSet
    from imgsynth.sources import import_source

    with tempfile.TemporaryDirectory() as scratch:
        if args.data is None:
            train, test = import_source("digits", Path(scratch) / "digits", size=16, test_fraction=0.2, seed=0)
        else:
            train, test = ImageSet.open(args.data / "train"), ImageSet.open(args.data / "test")
        config = ClassifierConfig(device="cpu", **({"epochs": args.epochs} if args.epochs else {}))
        print(f"digits 16 px: {len(train)} train / {len(test)} test images; torch {torch.__version__}, "
              f"{args.threads} threads, load average at start {os.getloadavg()[0]:.2f}")
        print(f"config: {config}\n")
        rows = []
        for run in range(2 if args.repeat else 1):
            started, cpu_started = time.perf_counter(), time.process_time()
            checkpoint = train_classifier(train, Path(scratch) / f"ckpt{run}", config, progress=False)
            trained, cpu_trained = time.perf_counter(), time.process_time()
            report = evaluate_classifier(checkpoint, test)
            rows.append((f"imgsynth resnet18_small (seed {config.seed})", trained - started,
                         cpu_trained - cpu_started, time.perf_counter() - trained, report.accuracy,
                         report.macro_f1))

        x_train, x_test = (s.as_array().reshape(len(s), -1) / 255.0 for s in (train, test))
        y_train, y_test = np.array(train.labels), np.array(test.labels)
        for name, model in (("sklearn LogisticRegression (pixels)", LogisticRegression(max_iter=2000)),
                            ("sklearn SVC rbf (pixels)", SVC())):
            started, cpu_started = time.perf_counter(), time.process_time()
            model.fit(x_train, y_train)
            fitted, cpu_fitted = time.perf_counter(), time.process_time()
            predicted = model.predict(x_test)
            rows.append((name, fitted - started, cpu_fitted - cpu_started, time.perf_counter() - fitted,
                         accuracy_score(y_test, predicted), f1_score(y_test, predicted, average="macro")))

    # cpu s: process CPU time; on a busy machine it shows the work, wall time shows the wait as well.
    print(f"{'method':<42} {'train s':>8} {'cpu s':>7} {'eval s':>7} {'accuracy':>9} {'macro-F1':>9}")
    for name, train_s, cpu_s, eval_s, accuracy, f1 in rows:
        print(f"{name:<42} {train_s:>8.1f} {cpu_s:>7.1f} {eval_s:>7.1f} {accuracy:>9.4f} {f1:>9.4f}")
    if args.repeat:
        same = rows[0][4] == rows[1][4]
        print(f"\nsame seed, same accuracy: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
