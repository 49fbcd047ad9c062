"""Worst-class robustness (docs/evaluation.md, "Worst-class robustness"): from the per-class counts of one
evaluation pass, each class's accuracy, the worst class and the mean of the worst 10% of the classes, as the
robust-fairness papers (Fair-ARD, ABSLD) report them beside the average. Plain Python on counts: main_eval.py,
the per-epoch evaluation and main_report.py share it, so that a worst class means the same everywhere."""
from typing import Dict, List, Optional, Sequence

WORST_FRACTION_PERCENT = 10  # the worst 10% of the classes: 1 of CIFAR-10's, 10 of CIFAR-100's, 20 of Tiny ImageNet's


def class_accuracies(correct: Sequence[int], n: Sequence[int]) -> List[Optional[float]]:
    """Each class's accuracy (%); None for a class with no example evaluated (a --n_ex subset may miss one)."""
    return [100.0 * c / t if t else None for c, t in zip(correct, n)]


def worst_class(accuracies: Sequence[Optional[float]]) -> Optional[int]:
    """The index of the class with the lowest accuracy (the lowest index among equals); None when no class
    has an example."""
    present = [(acc, index) for index, acc in enumerate(accuracies) if acc is not None]
    return min(present)[1] if present else None


def worst_count(classes: int, percent: int = WORST_FRACTION_PERCENT) -> int:
    """How many classes the worst `percent`% of `classes` is: rounded up in integers, at least one."""
    return max(1, -(-classes * percent // 100))


def worst_fraction(accuracies: Sequence[Optional[float]],
                   percent: int = WORST_FRACTION_PERCENT) -> Optional[Dict[str, float]]:
    """The mean accuracy of the worst `percent`% of the classes that have examples (rounded up, at least one:
    integer arithmetic, so 10% of 30 classes is 3, not 4), each class counted once whatever its size."""
    present = sorted(acc for acc in accuracies if acc is not None)
    if not present:
        return None
    k = worst_count(len(present), percent)
    return {"percent": percent, "classes": k, "accuracy": sum(present[:k]) / k}


def summary(correct: Sequence[int], n: Sequence[int], names: Optional[Sequence[str]] = None) -> Dict:
    """What a report's result entry holds of its classes: the counts (the source of every other number
    here), each class's accuracy, the worst class with its name, and the worst-10% mean."""
    accuracies = class_accuracies(correct, n)
    worst = worst_class(accuracies)
    fraction = worst_fraction(accuracies)
    return {
        "per_class": {"correct": [int(c) for c in correct], "n": [int(t) for t in n],
                      "accuracy": [None if a is None else round(a, 4) for a in accuracies]},
        "worst_class": None if worst is None else {
            "index": worst, "name": class_name(names, worst), "accuracy": round(accuracies[worst], 4)},
        "worst_10pct": None if fraction is None else dict(fraction, accuracy=round(fraction["accuracy"], 4)),
    }


def class_name(names: Optional[Sequence[str]], index: int) -> str:
    return str(names[index]) if names is not None and index < len(names) else f"class {index}"


SUMMARY_KEYS = ("per_class", "worst_class", "worst_10pct")


def check_per_class(entry: Dict, where: str, num_classes: Optional[int] = None,
                    names: Optional[Sequence[str]] = None) -> None:
    """ValueError naming the first part of a result entry's per-class numbers that is not what summary() writes
    from its counts: two lists of non-negative integers of one length (the report's num_classes), correct <= n
    per class, sums equal to the entry's own correct and n, and every derived number (each class's accuracy,
    the worst class and its name, the worst-10% mean) equal to the one recomputed from the counts, so that a
    reader may take any of them. An entry written before per-class counts existed has none of them, and passes."""
    per_class = entry.get("per_class")
    if per_class is None:
        present = [key for key in SUMMARY_KEYS if key in entry]
        if present:
            raise ValueError(f"{where}.{present[0]} is there without the per-class counts it comes from")
        return
    if not isinstance(per_class, dict):
        raise ValueError(f"{where}.per_class is not an object")
    correct, n = per_class.get("correct"), per_class.get("n")
    for key, values in (("correct", correct), ("n", n)):
        if not (isinstance(values, list) and values and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)):
            raise ValueError(f"{where}.per_class.{key} is not a list of counts (integers >= 0)")
    if len(correct) != len(n) or (num_classes is not None and len(n) != num_classes):
        expected = f"the report's {num_classes} classes" if num_classes is not None else "one length"
        raise ValueError(f"{where}.per_class has {len(correct)} correct and {len(n)} n counts, not {expected}")
    if any(c > t for c, t in zip(correct, n)):
        first = next(i for i, (c, t) in enumerate(zip(correct, n)) if c > t)
        raise ValueError(f"{where}.per_class counts class {first} right {correct[first]} times of {n[first]}")
    for key, values in (("correct", correct), ("n", n)):
        stated = entry.get(key)
        if isinstance(stated, int) and not isinstance(stated, bool) and sum(values) != stated:
            raise ValueError(f"{where}.per_class.{key} sums to {sum(values)}, but the entry says {key} {stated}")
    expected = summary(correct, n, names)
    for key in SUMMARY_KEYS:
        if entry.get(key) != expected[key]:
            raise ValueError(f"{where}.{key} is not what its per-class counts give")
