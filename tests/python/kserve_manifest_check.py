"""Checks KServe manifests against KServe's own typed model of its resources.

KServe's Python SDK (the `kserve` package) carries, for every field of its CRDs, the name and type
KServe's Go types give it (`openapi_types`, `attribute_map`; generated from the same Go types as
the CRD schemas in KServe's config/crd/), and the Kubernetes types they embed (V1Container, ...)
come from the `kubernetes` client it depends on. This walks each manifest against those types:
an unknown field (a typo, a field of another version), a wrong type (a string for a list, a
number for a string) and a missing required field are errors.

    python3 kserve_manifest_check.py FILE...   # prints {"checked": N, "errors": [...]}
"""
import json
import re
import sys

import kubernetes.client.models as k8s_models
import yaml
from kserve import models as kserve_models

KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}


def model_class(name):
    return getattr(kserve_models, name, None) or getattr(k8s_models, name, None)


def required_fields(cls):
    """The fields the schema marks required: for the Kubernetes client's (pydantic) models, as
    pydantic has them; for the SDK's own, those whose setter refuses None."""
    if hasattr(cls, "model_fields"):
        return [name for name, field in cls.model_fields.items() if field.is_required()]
    required = []
    for attr in cls.openapi_types:
        instance = cls.__new__(cls)
        instance.local_vars_configuration = type("C", (), {"client_side_validation": True})()
        setter = getattr(cls, attr, None)
        if not isinstance(setter, property) or setter.fset is None:
            continue
        try:
            setter.fset(instance, None)
        except ValueError:
            required.append(attr)
        except Exception:
            pass
    return required


def check(value, type_name, path, errors):
    if value is None:
        return
    # The SDK writes list[X] and dict(str, X); the Kubernetes client List[X] and Dict[str, X].
    list_of = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
    dict_of = re.fullmatch(r"(?:dict\(str, (.+)\))|(?:Dict\[str, (.+)\])", type_name)
    if list_of:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check(item, list_of.group(1), f"{path}[{i}]", errors)
    elif dict_of:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        for key, item in value.items():
            check(item, dict_of.group(1) or dict_of.group(2), f"{path}.{key}", errors)
    elif type_name == "str":
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {value!r}")
    elif type_name == "bool":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {value!r}")
    elif type_name in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number, got {value!r}")
    elif type_name in ("object", "datetime"):
        pass  # free-form (quantities such as "256Mi" are int-or-string) or a timestamp
    else:
        cls = model_class(type_name)
        if cls is None:
            errors.append(f"{path}: no model for type {type_name}")
            return
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object ({type_name}), got {value!r}")
            return
        by_key = {key: attr for attr, key in cls.attribute_map.items()}
        for key, item in value.items():
            if key not in by_key:
                known = ", ".join(sorted(by_key))
                errors.append(f"{path}.{key}: unknown field of {type_name} (known: {known})")
                continue
            check(item, cls.openapi_types[by_key[key]], f"{path}.{key}", errors)
        for attr in required_fields(cls):
            if value.get(cls.attribute_map[attr]) is None:
                errors.append(f"{path}: missing required field {cls.attribute_map[attr]}")


def main(paths):
    errors = []
    checked = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        for doc in documents:
            kind = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
            if kind is None:
                errors.append(f"{path}: {doc.get('apiVersion')} {doc.get('kind')} is not a KServe resource")
                continue
            checked += 1
            check(doc, kind, f"{path}: {doc['kind']}", errors)
    print(json.dumps({"checked": checked, "errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1:])
