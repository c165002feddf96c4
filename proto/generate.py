#!/usr/bin/env python3
"""Writes proto/*.proto from the compiled descriptors the stock Python packages ship.

- proto/grpc_predict_v2.proto: KServe's v2 gRPC protocol (package `inference`, service
  `GRPCInferenceService`), whole, from the `kserve` wheel's
  `kserve/protocol/grpc/grpc_predict_v2_pb2.py` (Apache-2.0, proto/LICENSE-kserve).
- proto/triton_extensions.proto: the two calls of Triton's grpc_service.proto that KServe's lacks,
  RepositoryIndex and ModelStatistics, with the messages they use, from the `tritonclient` wheel's
  `tritonclient/grpc/service_pb2.py` (BSD-3-Clause, proto/LICENSE-triton). Their service is named
  `TritonExtensions` here; build.rs serves its calls as part of `GRPCInferenceService`, where
  Triton has them.
- proto/onnx.proto and proto/LICENSE-onnx: ONNX's model format (package `onnx`, proto2), the
  `onnx` wheel's own `onnx/onnx.proto` and licence (Apache-2.0), copied byte for byte. build.rs
  compiles its messages for `maas export --format onnx` (src/onnx.rs).

Each gRPC descriptor is printed back as .proto text (the definitions, without the original comments),
so that maas builds from the definitions KServe's and Triton's clients use, with no protoc and no
download at build time.

    python3 proto/generate.py                       # regenerate every file
    python3 proto/generate.py --check               # exit 1 if a committed file differs
    python3 proto/generate.py --check onnx.proto    # check only the files named
"""
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

from google.protobuf import descriptor_pb2

F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    F.TYPE_DOUBLE: "double", F.TYPE_FLOAT: "float", F.TYPE_INT64: "int64",
    F.TYPE_UINT64: "uint64", F.TYPE_INT32: "int32", F.TYPE_FIXED64: "fixed64",
    F.TYPE_FIXED32: "fixed32", F.TYPE_BOOL: "bool", F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes", F.TYPE_UINT32: "uint32", F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_SFIXED64: "sfixed64", F.TYPE_SINT32: "sint32", F.TYPE_SINT64: "sint64",
}


def type_name(field, package):
    if field.type in SCALARS:
        return SCALARS[field.type]
    # ".inference.ModelInferRequest.InferInputTensor" -> "ModelInferRequest.InferInputTensor"
    return field.type_name.removeprefix("." + package + ".")


def field_line(field, message, scope, package):
    if field.type == F.TYPE_MESSAGE:
        entry = next((n for n in message.nested_type
                      if f".{package}.{scope}.{n.name}" == field.type_name
                      and n.options.map_entry), None)
        if entry is not None:
            key, value = entry.field
            return f"map<{type_name(key, package)}, {type_name(value, package)}> {field.name} = {field.number};"
    label = "repeated " if field.label == F.LABEL_REPEATED else ""
    if field.HasField("proto3_optional") and field.proto3_optional:
        label = "optional "
    return f"{label}{type_name(field, package)} {field.name} = {field.number};"


def message_lines(message, package, indent, outer=""):
    # `scope`: the message's full name in the package ("ModelInferRequest.InferInputTensor").
    scope = outer + message.name
    pad = "  " * indent
    lines = [f"{pad}message {message.name} {{"]
    for nested in message.nested_type:
        if not nested.options.map_entry:
            lines += message_lines(nested, package, indent + 1, scope + ".")
    for enum in message.enum_type:
        lines.append(f"{pad}  enum {enum.name} {{")
        lines += [f"{pad}    {v.name} = {v.number};" for v in enum.value]
        lines.append(f"{pad}  }}")
    real_oneofs = [o for i, o in enumerate(message.oneof_decl)
                   if not all(f.proto3_optional for f in message.field
                              if f.HasField("oneof_index") and f.oneof_index == i)]
    done_oneofs = set()
    for field in message.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            index = field.oneof_index
            if index in done_oneofs:
                continue
            done_oneofs.add(index)
            lines.append(f"{pad}  oneof {message.oneof_decl[index].name} {{")
            lines += [f"{pad}    {field_line(f, message, scope, package)}" for f in message.field
                      if f.HasField("oneof_index") and f.oneof_index == index]
            lines.append(f"{pad}  }}")
        else:
            lines.append(f"{pad}  {field_line(field, message, scope, package)}")
    assert len(done_oneofs) == len(real_oneofs)
    lines.append(f"{pad}}}")
    return lines


def service_and_messages(fd, service_name, methods, messages):
    lines = [f"service {service_name} {{"]
    for m in fd.service[0].method:
        if methods is None or m.name in methods:
            lines.append(f"  rpc {m.name}({m.input_type.removeprefix('.' + fd.package + '.')}) "
                         f"returns ({m.output_type.removeprefix('.' + fd.package + '.')}) {{}}")
    lines += ["}", ""]
    for message in fd.message_type:
        if messages is None or message.name in messages:
            lines += message_lines(message, fd.package, 0)
            lines.append("")
    return lines


def descriptor(module):
    fd = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fd)
    return fd


def kserve_text():
    from kserve.protocol.grpc import grpc_predict_v2_pb2

    fd = descriptor(grpc_predict_v2_pb2)
    assert not fd.dependency and not fd.enum_type and not fd.extension, "not handled here"
    lines = [
        "// KServe's v2 inference protocol over gRPC, as the `kserve` Python package (PyPI) compiles",
        "// it. Generated by proto/generate.py: do not edit.",
        "// Copyright The KServe Authors. Licensed under the Apache License, Version 2.0",
        "// (proto/LICENSE-kserve).",
        "",
        f'syntax = "{fd.syntax}";',
        "",
        f"package {fd.package};",
        "",
    ]
    return "\n".join(lines + service_and_messages(fd, fd.service[0].name, None, None))


# Triton's calls that KServe's protocol lacks, and every message they use.
TRITON_METHODS = ["RepositoryIndex", "ModelStatistics"]
TRITON_MESSAGES = [
    "RepositoryIndexRequest", "RepositoryIndexResponse", "ModelStatisticsRequest",
    "ModelStatisticsResponse", "ModelStatistics", "InferStatistics", "InferResponseStatistics",
    "InferBatchStatistics", "MemoryUsage", "StatisticDuration",
]


def triton_text():
    from tritonclient.grpc import service_pb2

    fd = descriptor(service_pb2)
    names = {m.name for m in fd.message_type}
    for message in fd.message_type:
        if message.name in TRITON_MESSAGES:
            for f in message.field:
                used = f.type_name.removeprefix("." + fd.package + ".").split(".")[0]
                assert not f.type_name or used in TRITON_MESSAGES or used not in names, \
                    f"{message.name}.{f.name} uses {f.type_name}, not copied"
    lines = [
        "// The calls of Triton's gRPC protocol (grpc_service.proto) that KServe's lacks, and the",
        "// messages they use, as the `tritonclient` Python package (PyPI) compiles them. Generated by",
        "// proto/generate.py: do not edit. build.rs serves these calls as part of",
        "// inference.GRPCInferenceService, where Triton has them.",
        "// Copyright (c) NVIDIA CORPORATION. BSD-3-Clause (proto/LICENSE-triton).",
        "",
        f'syntax = "{fd.syntax}";',
        "",
        f"package {fd.package};",
        "",
    ]
    return "\n".join(lines + service_and_messages(fd, "TritonExtensions", TRITON_METHODS, TRITON_MESSAGES))


def onnx_package_file(name):
    """The bytes of `name` in the installed `onnx` package, found without importing it."""
    spec = importlib.util.find_spec("onnx")
    if spec is None:
        sys.exit("proto/generate.py: the onnx package is not installed (pip install onnx)")
    with open(os.path.join(os.path.dirname(spec.origin), name), "rb") as f:
        return f.read()


def onnx_licence():
    """The licence in the `onnx` package's metadata (dist-info/licenses/LICENSE, or LICENSE)."""
    dist = importlib.metadata.distribution("onnx")
    for name in ("licenses/LICENSE", "LICENSE"):
        text = dist.read_text(name)
        if text is not None:
            return text.encode("utf-8")
    sys.exit("the onnx package ships no LICENSE")


# Files printed from the packages' compiled descriptors, one process each.
GENERATED = {"grpc_predict_v2.proto": kserve_text, "triton_extensions.proto": triton_text}
# Files copied unchanged from the packages.
COPIED = {"onnx.proto": lambda: onnx_package_file("onnx.proto"), "LICENSE-onnx": onnx_licence}


def contents(name):
    if name in COPIED:
        return COPIED[name]()
    # One process per package: kserve and tritonclient.grpc both register messages of the
    # package `inference` and cannot be imported together.
    return subprocess.run([sys.executable, __file__, "--print", name], check=True,
                          capture_output=True).stdout


if __name__ == "__main__":
    if sys.argv[1:2] == ["--print"]:
        sys.stdout.write(GENERATED[sys.argv[2]]())
        sys.exit(0)
    here = os.path.dirname(os.path.abspath(__file__))
    check = sys.argv[1:2] == ["--check"]
    names = sys.argv[2:] if check else sys.argv[1:]
    unknown = [n for n in names if n not in GENERATED and n not in COPIED]
    if unknown:
        sys.exit(f"{', '.join(unknown)}: not a file of proto/generate.py "
                 f"({', '.join([*GENERATED, *COPIED])})")
    stale = []
    for name in names or [*GENERATED, *COPIED]:
        path = os.path.join(here, name)
        data = contents(name)
        if check:
            if not os.path.isfile(path):
                stale.append(path)
                continue
            with open(path, "rb") as f:
                if f.read() != data:
                    stale.append(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
    if stale:
        sys.exit(f"{', '.join(stale)}: missing, or differ from the installed packages'; run python3 proto/generate.py")
