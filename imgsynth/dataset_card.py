"""Column types of a set's metadata, and the Hugging Face dataset card that declares them.

``metadata.jsonl`` names each image's class; a reader that wants a class *index* must be told the
class list. ``datasets`` takes it from a ``README.md`` card whose ``configs`` entry lists the features
(the ``imagefolder`` builder ignores ``dataset_info.features``: with metadata present it rebuilds the
features from the JSON and keeps only those a config declares), so every finished set carries one:
``label`` is a ``ClassLabel`` over the manifest's classes, ``file_name`` the image, every other column
typed from its values. ``datasets.load_dataset(SET)`` reads it; the packaged form
``load_dataset("imagefolder", data_dir=SET)`` reads no card, and takes the same features as
``features=`` (:func:`hf_features`). The parquet export uses the same types and feature dicts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # pyarrow is imported where a type is needed: every module that opens a set imports this one
    import pyarrow as pa

CARD = "README.md"
# What the writer always puts in these columns (inference would call an all-None seed column "null").
BASE_COLUMNS = {"caption": "string", "seed": "int64", "sha256": "string"}
# The Arrow types JSON values infer to, by their Arrow name, and what ``datasets`` calls them.
_VALUE_DTYPES = {"null": "null", "bool": "bool", "int64": "int64", "double": "float64", "string": "string"}
_MARK = "<!-- written by imgsynth: the features above follow imageset.json; edit the manifest, not them -->"


def infer_type(values: Sequence[Any]) -> pa.DataType | None:
    """The Arrow type pyarrow infers for a column of JSON values, or None when it has none imgsynth can
    declare (mixed kinds of value, such as a string in one row and an object in another)."""
    import pyarrow as pa

    try:
        inferred = pa.array(list(values)).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    return inferred if _declarable(inferred) else None


def _declarable(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    if str(arrow_type) in _VALUE_DTYPES:
        return True
    if pa.types.is_struct(arrow_type):
        return all(_declarable(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_list(arrow_type):
        return _declarable(arrow_type.value_type)
    return False


def storable(arrow_type: pa.DataType) -> bool:
    """Whether parquet can hold the type (it cannot hold a struct without fields, e.g. ``{}`` in every row)."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        return arrow_type.num_fields > 0 and all(storable(arrow_type.field(i).type)
                                                 for i in range(arrow_type.num_fields))
    if pa.types.is_list(arrow_type):
        return storable(arrow_type.value_type)
    return True


def column_types(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, pa.DataType | None]:
    """The type of every column besides ``file_name`` and ``label``: fixed for the base columns,
    inferred for the columns generators add (None where no single type fits)."""
    import pyarrow as pa

    return {c: pa.type_for_alias(BASE_COLUMNS[c]) if c in BASE_COLUMNS else infer_type([r.get(c) for r in rows])
            for c in columns if c not in ("file_name", "label")}


# --------------------------------------------------------------------------------------------- features

def feature_dict(arrow_type: pa.DataType | None) -> Any:
    """A ``datasets`` feature in its dict form (what parquet's ``huggingface`` metadata holds); None → string."""
    import pyarrow as pa

    if arrow_type is None:
        return {"dtype": "string", "_type": "Value"}
    if pa.types.is_struct(arrow_type):
        return {f.name: feature_dict(f.type) for f in arrow_type}
    if pa.types.is_list(arrow_type):
        return {"feature": feature_dict(arrow_type.value_type), "_type": "List"}
    return {"dtype": _VALUE_DTYPES[str(arrow_type)], "_type": "Value"}


def _feature_yaml(arrow_type: pa.DataType | None) -> dict[str, Any]:
    """The same feature in the card's YAML form (``datasets.Features._from_yaml_list`` reads it)."""
    import pyarrow as pa

    if arrow_type is None:
        return {"dtype": "string"}
    if pa.types.is_struct(arrow_type):
        return {"struct": [{"name": f.name, **_feature_yaml(f.type)} for f in arrow_type]}
    if pa.types.is_list(arrow_type):
        inner = _feature_yaml(arrow_type.value_type)
        return {"list": inner["dtype"] if list(inner) == ["dtype"] else
                inner["struct"] if list(inner) == ["struct"] else inner}
    return {"dtype": _VALUE_DTYPES[str(arrow_type)]}


def features_dict(classes: Sequence[str], types: Mapping[str, pa.DataType | None], *,
                  image: str = "image") -> dict[str, Any]:
    """All features in dict form: the image, ``label`` as a ClassLabel over ``classes``, then ``types``."""
    return {image: {"_type": "Image"}, "label": {"names": list(classes), "_type": "ClassLabel"},
            **{name: feature_dict(t) for name, t in types.items()}}


def hf_features(classes: Sequence[str], types: Mapping[str, pa.DataType | None]) -> Any:
    """The ``datasets.Features`` of a set, for ``load_dataset("imagefolder", data_dir=SET, features=...)``."""
    import datasets

    return datasets.Features.from_dict(features_dict(classes, types))


# --------------------------------------------------------------------------------------------- the card

def card_text(set_id: str, classes: Sequence[str], types: Mapping[str, pa.DataType | None]) -> str:
    """The README.md of a set: YAML front matter declaring the features, and a few lines saying what it is."""
    import yaml

    label = {"class_label": {"names": {str(i): name for i, name in enumerate(classes)}}}
    features = [{"name": "image", "dtype": "image"}, {"name": "label", "dtype": label},
                *({"name": name, **_feature_yaml(t)} for name, t in types.items())]
    front = yaml.safe_dump({"configs": [{"config_name": "default", "features": features}]},
                           sort_keys=False, allow_unicode=True)
    listing = ", ".join(f"{i} = {name}" for i, name in enumerate(classes))
    return (f"---\n{front}---\n{_MARK}\n\n# imgsynth ImageSet {set_id[:12]}\n\n"
            f"Labels index the classes in this order (as in `imageset.json`): {listing}.\n\n"
            "    datasets.load_dataset(\"PATH/TO/THIS/FOLDER\")            # label is a ClassLabel\n"
            "    torchvision.datasets.ImageFolder(\"PATH/TO/THIS/FOLDER/images\")\n")


def card_classes(text: str) -> list[str] | None:
    """The ClassLabel names, in index order, that an imgsynth-written card declares for ``label``; None
    when the card is not one imgsynth wrote (a user's own README is left alone). A card imgsynth wrote
    whose front matter no longer reads as such raises ValueError."""
    from imgsynth.structured_files import StructuredFileError, parse_yaml

    if _MARK not in text:
        return None
    end = text.find("\n---\n", 3)
    try:
        # The one YAML reader: safe loading, aliases and nesting bounded (a card is the user's to edit).
        front = parse_yaml(text[4:end], CARD) if text.startswith("---\n") and end > 0 else None
    except StructuredFileError as exc:
        raise ValueError(f"its front matter cannot be read: {str(exc).removeprefix(CARD + ': ')}") from None
    try:
        features = front["configs"][0]["features"]
        label = next(f for f in features if isinstance(f, dict) and f.get("name") == "label")
        names = label["dtype"]["class_label"]["names"]
        return [str(names[key]) for key in sorted(names, key=int)]
    except (KeyError, IndexError, TypeError, ValueError, StopIteration, AttributeError):
        raise ValueError("its front matter does not declare a 'label' ClassLabel that datasets can read") from None
