"""The datasets' class names, by label index: what a worst class is called in main_eval.py's reports and tables.
CIFAR's label orders are fixed by the datasets (batches.meta's label_names, meta's fine_label_names); Tiny
ImageNet's is the sorted wnids.txt, as its reader (datasets.load_tiny_imagenet) labels the images."""
import os
from typing import Dict, List

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100 = (  # the fine labels, alphabetical, as the dataset numbers them
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm")
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"


def tiny_imagenet_wnids(wnids_path: str) -> List[str]:
    """wnids.txt's class ids, sorted: a class's label is its position here."""
    with open(wnids_path) as f:
        return sorted(line.strip() for line in f if line.strip())


def _words(path: str) -> Dict[str, str]:
    """words.txt's first name of each wnid ('n02124075' -> 'Egyptian cat'); {} without the file."""
    if not os.path.isfile(path):
        return {}
    names = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            wnid, _, words = line.rstrip("\n").partition("\t")
            if words:
                names[wnid.strip()] = words.split(",")[0].strip()
    return names


def class_names(dataset: str, num_classes: int, data_dir: str) -> List[str]:
    """Each label's name: CIFAR's own; Tiny ImageNet's wnid with its words.txt name ('n02124075 (Egyptian cat)'),
    the wnid alone where words.txt lacks it, 'class <label>' where wnids.txt cannot be read (the split itself was
    read, so it normally can)."""
    if dataset == "CIFAR10":
        return list(CIFAR10)
    if dataset == "CIFAR100":
        return list(CIFAR100)
    root = os.path.join(data_dir, TINY_IMAGENET_FOLDER)
    try:
        wnids = tiny_imagenet_wnids(os.path.join(root, "wnids.txt"))
    except OSError:
        wnids = []
    if len(wnids) != num_classes:
        return [f"class {label}" for label in range(num_classes)]
    words = _words(os.path.join(root, "words.txt"))
    return [f"{wnid} ({words[wnid]})" if wnid in words else wnid for wnid in wnids]
