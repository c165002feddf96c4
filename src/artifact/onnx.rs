//! ONNX export: the same model as a standard ONNX graph, for other runtimes.
//!
//! The MLP: `input [N,3,32,32] -> Flatten -> Gemm -> Relu -> Gemm -> Softmax -> probabilities
//! [N,C]`; the CNN: `Conv -> Relu -> MaxPool -> Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Relu
//! -> Gemm -> Softmax`; the initializers carry the parameters' names in maas's files. Opset 13, with a dynamic batch dimension and the class names, the preprocessing and the
//! provenance in the model's metadata. The protobuf is written directly: the few messages needed
//! are small, and a protobuf toolchain would be a heavy build dependency for them.

use anyhow::{Context, Result};

use crate::artifact::export::Provenance;
use crate::model::{MLP_PARAMETERS, MlpWeights, ModelConfig, Weights};

/// The ONNX opset the graph uses.
pub const OPSET: i64 = 13;
/// The ONNX IR version written (ONNX 1.10+, onnxruntime 1.10+).
pub const IR_VERSION: i64 = 8;
/// Name of the graph's input.
pub const INPUT: &str = "input";
/// Name of the graph's output.
pub const OUTPUT: &str = "probabilities";

const FLOAT: i64 = 1; // TensorProto.DataType.FLOAT
const ATTRIBUTE_INT: i64 = 2; // AttributeProto.AttributeType.INT
const ATTRIBUTE_INTS: i64 = 7; // AttributeProto.AttributeType.INTS

/// Protobuf wire-format writer for the handful of ONNX messages used here.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }
    fn int(mut self, field: u32, v: i64) -> Self {
        self.key(field, 0);
        // Negative int64 values are sign-extended to ten bytes, as protobuf specifies.
        self.varint(v as u64);
        self
    }
    fn bytes(mut self, field: u32, data: &[u8]) -> Self {
        self.key(field, 2);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }
    fn string(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
    fn message(self, field: u32, m: Message) -> Self {
        self.bytes(field, &m.0)
    }
}

/// A `TensorProto` initializer holding f32 values.
fn initializer(name: &str, dims: &[usize], values: &[f32]) -> Message {
    let mut m = Message::default();
    for &d in dims {
        m = m.int(1, d as i64);
    }
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    m.int(2, FLOAT).string(8, name).bytes(9, &raw)
}

/// A `ValueInfoProto` of a float tensor; `None` dimensions are the dynamic batch `N`.
fn value_info(name: &str, dims: &[Option<usize>]) -> Message {
    let mut shape = Message::default();
    for d in dims {
        let dim = match d {
            Some(v) => Message::default().int(1, *v as i64),
            None => Message::default().string(2, "N"),
        };
        shape = shape.message(1, dim);
    }
    let tensor = Message::default().int(1, FLOAT).message(2, shape);
    let ty = Message::default().message(1, tensor);
    Message::default().string(1, name).message(2, ty)
}

/// A `NodeProto` with integer attributes.
fn node(op: &str, inputs: &[&str], output: &str, attributes: &[(&str, i64)]) -> Message {
    let mut m = Message::default();
    for i in inputs {
        m = m.string(1, i);
    }
    m = m
        .string(2, output)
        .string(3, &format!("{op}_{output}"))
        .string(4, op);
    for (name, v) in attributes {
        let a = Message::default()
            .string(1, name)
            .int(3, *v)
            .int(20, ATTRIBUTE_INT);
        m = m.message(5, a);
    }
    m
}

/// A `NodeProto` with integer-list attributes (kernel shapes, pads, strides).
fn node_ints(op: &str, inputs: &[&str], output: &str, attributes: &[(&str, &[i64])]) -> Message {
    let mut m = node(op, inputs, output, &[]);
    for (name, values) in attributes {
        let mut a = Message::default().string(1, name);
        for v in *values {
            a = a.int(8, *v);
        }
        m = m.message(5, a.int(20, ATTRIBUTE_INTS));
    }
    m
}

/// The CNN's nodes ([`crate::model::cnn`]): the parameters are the initializers of their own names.
fn cnn_nodes(graph: Message) -> Message {
    let conv = |input: &str, layer: &str, output: &str| {
        let (weight, bias) = (format!("{layer}.weight"), format!("{layer}.bias"));
        node_ints(
            "Conv",
            &[input, &weight, &bias],
            output,
            &[("kernel_shape", &[3, 3]), ("pads", &[1, 1, 1, 1])],
        )
    };
    let pool = |input: &str, output: &str| {
        node_ints(
            "MaxPool",
            &[input],
            output,
            &[("kernel_shape", &[2, 2]), ("strides", &[2, 2])],
        )
    };
    graph
        .message(1, conv(INPUT, "conv1", "conv1"))
        .message(1, node("Relu", &["conv1"], "relu1", &[]))
        .message(1, pool("relu1", "pool1"))
        .message(1, conv("pool1", "conv2", "conv2"))
        .message(1, node("Relu", &["conv2"], "relu2", &[]))
        .message(1, pool("relu2", "pool2"))
        .message(1, node("Flatten", &["pool2"], "flat", &[("axis", 1)]))
        .message(
            1,
            node(
                "Gemm",
                &["flat", "dense.weight", "dense.bias"],
                "dense_linear",
                &[],
            ),
        )
        .message(1, node("Relu", &["dense_linear"], "dense", &[]))
        .message(
            1,
            node(
                "Gemm",
                &["dense", "output.weight", "output.bias"],
                "logits",
                &[],
            ),
        )
        .message(1, node("Softmax", &["logits"], OUTPUT, &[("axis", 1)]))
}

/// The CNN as an ONNX graph.
fn cnn_graph(config: &ModelConfig, weights: &Weights) -> Message {
    let [c, height, width] = config.input_shape;
    let classes = weights.classes();
    let mut graph = cnn_nodes(Message::default()).string(2, "maas");
    for array in &weights.arrays {
        graph = graph.message(5, initializer(&array.name, &array.shape, &array.values));
    }
    graph
        .message(
            11,
            value_info(INPUT, &[None, Some(c), Some(height), Some(width)]),
        )
        .message(12, value_info(OUTPUT, &[None, Some(classes)]))
}

/// The MLP as an ONNX graph.
fn mlp_graph(config: &ModelConfig, weights: &Weights) -> Result<Message> {
    let weights = MlpWeights::from_weights(weights)?;
    let (h, classes) = (weights.hidden, weights.classes());
    let [c, height, width] = config.input_shape;
    // The initializers carry the parameters' names in maas's files.
    let [w1, b1, w2, b2] = MLP_PARAMETERS;
    let graph = Message::default()
        .message(1, node("Flatten", &[INPUT], "flat", &[("axis", 1)]))
        .message(1, node("Gemm", &["flat", w1, b1], "hidden_linear", &[]))
        .message(1, node("Relu", &["hidden_linear"], "hidden", &[]))
        .message(1, node("Gemm", &["hidden", w2, b2], "logits", &[]))
        .message(1, node("Softmax", &["logits"], OUTPUT, &[("axis", 1)]))
        .string(2, "maas")
        .message(5, initializer(w1, &[c * height * width, h], &weights.w1))
        .message(5, initializer(b1, &[h], &weights.b1))
        .message(5, initializer(w2, &[h, classes], &weights.w2))
        .message(5, initializer(b2, &[classes], &weights.b2))
        .message(
            11,
            value_info(INPUT, &[None, Some(c), Some(height), Some(width)]),
        )
        .message(12, value_info(OUTPUT, &[None, Some(classes)]));
    Ok(graph)
}

/// The model as an ONNX `ModelProto`.
pub fn encode(
    config: &ModelConfig,
    weights: &Weights,
    provenance: Option<&Provenance>,
) -> Result<Vec<u8>> {
    let arch = config.arch()?;
    let (graph, what) = match arch.flag() {
        "mlp" => (mlp_graph(config, weights)?, "MLP"),
        "cnn" => (cnn_graph(config, weights), "CNN"),
        other => anyhow::bail!("maas cannot write the {other} architecture as ONNX yet"),
    };
    let classes = weights.classes();
    let json = |key: &str, v: serde_json::Result<String>| {
        v.with_context(|| format!("cannot write the model's {key} as ONNX metadata"))
    };
    let mut metadata = vec![
        (
            "classes",
            json("classes", serde_json::to_string(&config.classes))?,
        ),
        (
            "preprocessing",
            json(
                "preprocessing",
                serde_json::to_string(&config.preprocessing),
            )?,
        ),
        ("architecture", config.architecture.clone()),
        ("maas_version", crate::VERSION.to_string()),
    ];
    if let Some(p) = provenance {
        metadata.push(("provenance", json("provenance", serde_json::to_string(p))?));
    }
    let mut model = Message::default()
        .int(1, IR_VERSION)
        .string(2, "maas")
        .string(3, crate::VERSION)
        .string(6, &format!("maas {what}: FP32 input [N,3,32,32] in [0,1], channel-major RGB; FP32 probabilities [N,{classes}]"))
        .message(7, graph)
        .message(8, Message::default().string(1, "").int(2, OPSET));
    for (key, value) in metadata {
        model = model.message(14, Message::default().string(1, key).string(2, &value));
    }
    Ok(model.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_the_protobuf_encoding() {
        let encode = |v: i64| Message::default().int(1, v).0;
        assert_eq!(encode(1), [0x08, 0x01]);
        assert_eq!(encode(300), [0x08, 0xAC, 0x02]);
        assert_eq!(encode(-1).len(), 11);
        assert_eq!(
            Message::default().string(2, "ab").0,
            [0x12, 0x02, b'a', b'b']
        );
    }
}
