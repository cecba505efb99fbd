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


def test_top5_accuracy_appears_from_ten_classes_where_it_says_something():
    scores = np.tile(np.arange(10, dtype=np.float32), (2, 1))  # ranking: 9, 8, ..., 0
    report = classification_report(scores, np.array([5, 4]), [str(i) for i in range(10)])
    assert report["accuracy"] == 0.0
    assert report["top5_accuracy"] == pytest.approx(0.5)
    six = classification_report(scores[:, :6], np.array([5, 4]), [str(i) for i in range(6)])
    assert "top5_accuracy" not in six  # five of six classes: near 1 by construction


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


def test_one_macro_f1_on_every_path_agrees_with_scikit_learn_a_slice_with_absent_classes_included():
    import torch
    from sklearn.metrics import f1_score

    from hf_cnn_ft.config.sections import FinetuneArguments
    from hf_cnn_ft.evaluation.classification_report import macro_f1
    from hf_cnn_ft.evaluation.error_analysis import slice_metrics
    from hf_cnn_ft.strategies.probe import ProbeHooks, train_head

    classes = 6
    # A slice holding two of the six classes, all right: scikit-learn says 1.0 (not 2/6).
    perfect = slice_metrics(np.array([0, 1, 1]), np.array([0, 1, 1]), ["site-a"] * 3, classes)
    assert perfect["per_slice"]["site-a"]["f1_macro"] == pytest.approx(1.0)

    rng = np.random.default_rng(1)
    references = rng.choice([0, 1, 3], size=80)  # classes 2, 4 and 5 absent
    predictions = np.where(rng.random(80) < 0.7, references, rng.integers(0, classes, size=80))
    expected = f1_score(references, predictions, average="macro", zero_division=0)
    report = classification_report(one_hot_scores(predictions, classes), references, list("abcdef"))
    sliced = slice_metrics(predictions, references, ["x" if i % 2 else "y" for i in range(80)], classes)
    assert report["f1_macro"] == pytest.approx(expected)
    for name, members in (("x", slice(1, None, 2)), ("y", slice(0, None, 2))):
        theirs = f1_score(references[members], predictions[members], average="macro", zero_division=0)
        assert sliced["per_slice"][name]["f1_macro"] == pytest.approx(theirs)

    torch.manual_seed(0)
    features, labels = torch.randn(40, 8), torch.from_numpy(rng.choice([0, 1, 3], size=40))
    validation = (torch.randn(30, 8), torch.from_numpy(rng.choice([0, 1, 3], size=30)))
    head = torch.nn.Linear(8, classes)
    args = FinetuneArguments(head_epochs=3, head_batch_size=16)
    history = train_head(head, features, labels, args, 0, validation, None, ProbeHooks(macro_f1=macro_f1))
    with torch.no_grad():
        probed = head(validation[0]).argmax(1).numpy()
    theirs = f1_score(validation[1].numpy(), probed, average="macro", zero_division=0)
    assert history[-1]["eval_f1_macro"] == pytest.approx(theirs)
