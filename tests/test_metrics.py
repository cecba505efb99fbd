import evaluate
import numpy as np
import pytest

from hf_cnn_ft.evaluation.metrics import METRIC_SCRIPT, classification_report
from hf_cnn_ft.evaluation.plots import epoch_history


def one_hot_scores(predictions, num_classes):
    scores = np.zeros((len(predictions), num_classes), dtype=np.float32)
    scores[np.arange(len(predictions)), predictions] = 1.0
    return scores


def test_report_matches_a_hand_computed_example():
    references = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    report = classification_report(one_hot_scores(predictions, 3), references, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    # a: P 2/2 R 2/3; b: P 1/2 R 1/2; c: P 1/2 R 1/1
    per = report["per_class"]
    assert per["a"]["precision"] == pytest.approx(1.0) and per["a"]["recall"] == pytest.approx(2 / 3)
    assert per["b"]["f1"] == pytest.approx(0.5)
    assert per["c"]["f1"] == pytest.approx(2 / 3)
    assert report["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["f1_weighted"] == pytest.approx((0.8 * 3 + 0.5 * 2 + 2 / 3) / 6)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["num_samples"] == 6 and "top5_accuracy" not in report


def test_top5_accuracy_appears_above_five_classes():
    scores = np.tile(np.arange(7, dtype=np.float32), (2, 1))  # ranking: 6, 5, 4, 3, 2, 1, 0
    report = classification_report(scores, np.array([2, 1]), [str(i) for i in range(7)])
    assert report["accuracy"] == 0.0
    assert report["top5_accuracy"] == pytest.approx(0.5)


def test_evaluate_loads_the_shipped_metric_module_offline():
    metric = evaluate.load(METRIC_SCRIPT)
    scores = one_hot_scores(np.array([1, 0, 1]), 2)
    result = metric.compute(predictions=scores, references=[1, 0, 0], label_names=["x", "y"])
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["per_class"]["y"]["precision"] == pytest.approx(0.5)


def test_epoch_history_splits_train_and_validation_series():
    log = [
        {"loss": 1.0, "epoch": 1.0},
        {"eval_loss": 0.9, "eval_accuracy": 0.5, "epoch": 1.0},
        {"loss": 0.5, "epoch": 2.0},
        {"eval_loss": 0.4, "eval_accuracy": 0.8, "epoch": 2.0},
        {"train_runtime": 3.0, "epoch": 2.0},
    ]
    series = epoch_history(log, "accuracy")
    assert series["train_loss"] == [(1.0, 1.0), (2.0, 0.5)]
    assert series["eval_accuracy"] == [(1.0, 0.5), (2.0, 0.8)]


def test_report_agrees_with_scikit_learn_on_random_labels_with_classes_never_predicted():
    from sklearn.metrics import classification_report as sklearn_report
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    references = rng.integers(0, 7, size=300)
    predictions = rng.choice([0, 1, 2, 4], size=300)  # classes 3, 5 and 6 are never predicted
    names = [f"c{i}" for i in range(8)]  # class 7: neither in the references nor predicted
    report = classification_report(one_hot_scores(predictions, 8), references, names)
    expected = sklearn_report(references, predictions, output_dict=True, zero_division=0)
    assert report["accuracy"] == pytest.approx(expected["accuracy"])
    for average in ("macro", "weighted"):
        for name in ("precision", "recall", "f1"):
            assert report[f"{name}_{average}"] == pytest.approx(
                expected[f"{average} avg"][f"{name}-score" if name == "f1" else name]
            )
    for i in range(7):
        ours, theirs = report["per_class"][f"c{i}"], expected[str(i)]
        assert ours["precision"] == pytest.approx(theirs["precision"]) and ours["recall"] == pytest.approx(
            theirs["recall"]
        )
        assert ours["f1"] == pytest.approx(theirs["f1-score"]) and ours["support"] == theirs["support"]
    assert report["per_class"]["c7"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["confusion_matrix"] == confusion_matrix(references, predictions, labels=range(8)).tolist()
