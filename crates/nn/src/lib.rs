//! A small CPU interpreter for the convolutional networks behind Afterview's face landmarks.
//!
//! Job: load an ONNX file made of the operators MediaPipe's face models use (`Conv`, including
//! depthwise `Conv`, `PRelu`, `Relu`, `Add`, `MaxPool`, `Pad`, `Transpose`, `Reshape`,
//! `Concat`) and run it on one image. Anything else is refused at load time with
//! [`NnError::Unsupported`], never guessed.
//!
//! Invariants:
//! - **Deterministic**: every sum runs in one fixed order (no threads, no reassociation), so the
//!   same binary gives bit-identical outputs for the same input on every run.
//! - **NHWC inside**: images and activations are stored height × width × channels, so the
//!   inner loops of convolutions run over contiguous channels and vectorize. The ONNX graph is
//!   NCHW; `Transpose`, `Reshape` and `Concat` see the logical NCHW tensor.
//! - **Checked**: shapes are checked as the graph runs; a mismatch is an error, not a panic.
//!
//! Why not `tract-onnx`: it builds in 10-12 minutes on a 2-core machine, and these networks
//! need eight operators (about 400 lines here, checked against onnxruntime by the tests).

mod ops;
mod proto;

use std::collections::HashMap;

use proto::{Attr, NodeProto, TensorData};

/// What can go wrong loading or running a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NnError {
    /// The bytes are not a readable ONNX model.
    #[error("not a readable ONNX model: {0}")]
    Format(String),
    /// The model uses something this interpreter does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor has the wrong shape for its operation (or the input is the wrong size).
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// A row-major tensor with its logical (ONNX) shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// An activation while the graph runs: 4-D tensors produced by convolutions are stored NHWC
/// (`nhwc == true`) with their logical shape still NCHW.
#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<f32>,
    pub(crate) nhwc: bool,
}

impl Value {
    /// The same tensor in plain row-major order of its logical shape.
    fn into_row_major(self) -> Value {
        if !self.nhwc {
            return self;
        }
        let [n, c, h, w] = self.shape[..] else {
            unreachable!("only 4-D values are stored NHWC")
        };
        if h * w == 1 || c == 1 {
            return Value {
                nhwc: false,
                ..self
            };
        }
        let mut data = vec![0f32; self.data.len()];
        for b in 0..n {
            for y in 0..h {
                for x in 0..w {
                    let src = ((b * h + y) * w + x) * c;
                    for ch in 0..c {
                        data[((b * c + ch) * h + y) * w + x] = self.data[src + ch];
                    }
                }
            }
        }
        Value {
            shape: self.shape,
            data,
            nhwc: false,
        }
    }
}

/// A loaded operation.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Conv(ops::Conv),
    PRelu(Vec<f32>),
    Relu,
    Add,
    MaxPool(ops::Pool),
    Pad { begin: [usize; 4], end: [usize; 4] },
    Transpose(Vec<usize>),
    Reshape(Vec<i64>),
    Concat(i64),
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    inputs: Vec<usize>,
    output: usize,
    /// Slots whose last reader is this step (freed after it).
    frees: Vec<usize>,
}

/// A model ready to run.
#[derive(Debug, Clone)]
pub struct Model {
    steps: Vec<Step>,
    slots: usize,
    input: usize,
    input_shape: Vec<usize>,
    outputs: Vec<(String, usize)>,
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a Attr> {
    n.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    match attr(n, name) {
        Some(Attr::Ints(v)) => Some(v.clone()),
        Some(Attr::Int(v)) => Some(vec![*v]),
        _ => None,
    }
}

fn unsupported(n: &NodeProto, what: &str) -> NnError {
    NnError::Unsupported(format!("{} node: {what}", n.op_type))
}

fn usizes(v: &[i64], n: &NodeProto, what: &str) -> Result<Vec<usize>, NnError> {
    v.iter()
        .map(|&x| usize::try_from(x).map_err(|_| unsupported(n, &format!("negative {what}"))))
        .collect()
}

/// Frees each slot after its last reader, unless it is an output.
fn free_after_last_use(steps: &mut [Step], outputs: &[(String, usize)]) {
    let mut last_use: HashMap<usize, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        for &slot in &s.inputs {
            last_use.insert(slot, i);
        }
    }
    for (slot, i) in last_use {
        if !outputs.iter().any(|(_, s)| *s == slot) {
            steps[i].frees.push(slot);
        }
    }
}

/// A graph node with the graph's constants, while it is turned into a [`Step`].
struct Node<'a> {
    n: &'a NodeProto,
    consts: &'a HashMap<&'a str, &'a proto::TensorProto>,
}

impl Node<'_> {
    fn constant(&self, i: usize) -> Result<&proto::TensorProto, NnError> {
        self.n
            .inputs
            .get(i)
            .and_then(|name| self.consts.get(name.as_str()).copied())
            .ok_or_else(|| unsupported(self.n, &format!("input {i} must be a constant")))
    }

    fn floats(&self, i: usize) -> Result<(&[i64], &[f32]), NnError> {
        let t = self.constant(i)?;
        match &t.data {
            TensorData::Float(v) => Ok((&t.dims, v)),
            TensorData::Int64(_) => Err(unsupported(self.n, "float constant expected")),
        }
    }

    fn int_values(&self, i: usize) -> Result<Vec<i64>, NnError> {
        match &self.constant(i)?.data {
            TensorData::Int64(v) => Ok(v.clone()),
            TensorData::Float(_) => Err(unsupported(self.n, "int64 constant expected")),
        }
    }

    /// The step computing this node: its operator, its runtime inputs' slots, a new slot for
    /// its output (recorded in `slot_of`).
    fn step(&self, slot_of: &mut HashMap<String, usize>) -> Result<Step, NnError> {
        let n = self.n;
        let op = self.op()?;
        let runtime: Vec<&String> = n
            .inputs
            .iter()
            .filter(|i| !i.is_empty() && !self.consts.contains_key(i.as_str()))
            .collect();
        let wanted = match op {
            Op::Add | Op::Concat(_) => None,
            _ => Some(1),
        };
        if wanted.is_some_and(|w| runtime.len() != w) || runtime.is_empty() {
            return Err(unsupported(n, "unexpected number of inputs"));
        }
        let inputs = runtime
            .iter()
            .map(|name| {
                slot_of
                    .get(name.as_str())
                    .copied()
                    .ok_or_else(|| NnError::Format(format!("{name} is used before it is computed")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let [out] = n.outputs.as_slice() else {
            return Err(unsupported(n, "one output expected"));
        };
        let output = slot_of.len();
        slot_of.insert(out.clone(), output);
        Ok(Step {
            op,
            inputs,
            output,
            frees: vec![],
        })
    }

    fn op(&self) -> Result<Op, NnError> {
        let n = self.n;
        Ok(match n.op_type.as_str() {
            "Conv" => self.conv()?,
            "PRelu" => Op::PRelu(self.floats(1)?.1.to_vec()),
            "Relu" => Op::Relu,
            "Add" => Op::Add,
            "MaxPool" => self.max_pool()?,
            "Pad" => self.pad()?,
            "Transpose" => Op::Transpose(usizes(
                &ints(n, "perm").ok_or_else(|| unsupported(n, "no perm"))?,
                n,
                "axis",
            )?),
            "Reshape" => Op::Reshape(self.int_values(1)?),
            "Concat" => match attr(n, "axis") {
                Some(Attr::Int(a)) => Op::Concat(*a),
                _ => return Err(unsupported(n, "no axis")),
            },
            other => return Err(NnError::Unsupported(format!("operator {other}"))),
        })
    }

    fn conv(&self) -> Result<Op, NnError> {
        let n = self.n;
        let (wdims, w) = self.floats(1)?;
        let bias = if n.inputs.len() > 2 {
            Some(self.floats(2)?.1)
        } else {
            None
        };
        let group = match attr(n, "group") {
            Some(Attr::Int(g)) => *g,
            None => 1,
            _ => return Err(unsupported(n, "bad group")),
        };
        if ints(n, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
            return Err(unsupported(n, "dilation"));
        }
        if matches!(attr(n, "auto_pad"), Some(Attr::Str(s)) if s != "NOTSET") {
            return Err(unsupported(n, "auto_pad"));
        }
        let strides = usizes(&ints(n, "strides").unwrap_or(vec![1, 1]), n, "stride")?;
        let pads = usizes(&ints(n, "pads").unwrap_or(vec![0; 4]), n, "pad")?;
        let wdims = usizes(wdims, n, "dim")?;
        Ok(Op::Conv(
            ops::Conv::new(&wdims, w, bias, group, &strides, &pads)
                .map_err(|e| unsupported(n, &e))?,
        ))
    }

    fn max_pool(&self) -> Result<Op, NnError> {
        let n = self.n;
        let k = usizes(&ints(n, "kernel_shape").unwrap_or_default(), n, "kernel")?;
        let s = usizes(&ints(n, "strides").unwrap_or(vec![1, 1]), n, "stride")?;
        let same_upper = match attr(n, "auto_pad") {
            Some(Attr::Str(s)) if s == "SAME_UPPER" => true,
            Some(Attr::Str(s)) if s == "VALID" => false,
            None if ints(n, "pads").is_none_or(|p| p.iter().all(|&x| x == 0)) => false,
            _ => return Err(unsupported(n, "padding mode")),
        };
        let (&[kh, kw], &[sh, sw]) = (k.as_slice(), s.as_slice()) else {
            return Err(unsupported(n, "2-D pooling expected"));
        };
        Ok(Op::MaxPool(ops::Pool {
            kernel: (kh, kw),
            stride: (sh, sw),
            same_upper,
        }))
    }

    fn pad(&self) -> Result<Op, NnError> {
        let n = self.n;
        if matches!(attr(n, "mode"), Some(Attr::Str(m)) if m != "constant") {
            return Err(unsupported(n, "only constant padding"));
        }
        if n.inputs.len() > 2 && !n.inputs[2].is_empty() {
            let (_, v) = self.floats(2)?;
            if v.iter().any(|&x| x != 0.0) {
                return Err(unsupported(n, "non-zero pad value"));
            }
        }
        let p = usizes(&self.int_values(1)?, n, "pad")?;
        let &[b0, b1, b2, b3, e0, e1, e2, e3] = p.as_slice() else {
            return Err(unsupported(n, "4-D padding expected"));
        };
        Ok(Op::Pad {
            begin: [b0, b1, b2, b3],
            end: [e0, e1, e2, e3],
        })
    }
}

impl Model {
    /// Loads a serialized ONNX model with one 4-D float input.
    pub fn from_onnx(bytes: &[u8]) -> Result<Model, NnError> {
        let g = proto::model(bytes)?;
        let consts: HashMap<&str, &proto::TensorProto> = g
            .initializers
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let [input] = g.inputs.as_slice() else {
            return Err(NnError::Unsupported(format!(
                "{} graph inputs (one expected)",
                g.inputs.len()
            )));
        };
        if input.shape.len() != 4 || input.shape.contains(&0) {
            return Err(NnError::Unsupported(format!(
                "input {} has shape {:?} (a fixed 4-D NCHW shape expected)",
                input.name, input.shape
            )));
        }
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        slot_of.insert(input.name.clone(), 0);
        let mut steps = vec![];
        for n in &g.nodes {
            let node = Node { n, consts: &consts };
            steps.push(node.step(&mut slot_of)?);
        }
        let outputs = g
            .outputs
            .iter()
            .map(|o| {
                slot_of
                    .get(&o.name)
                    .map(|&s| (o.name.clone(), s))
                    .ok_or_else(|| NnError::Format(format!("output {} is never computed", o.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        free_after_last_use(&mut steps, &outputs);
        Ok(Model {
            steps,
            slots: slot_of.len(),
            input: 0,
            input_shape: input.shape.clone(),
            outputs,
        })
    }

    /// The model's input shape, NCHW (`[1, channels, height, width]`).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The names of the outputs, in the order [`Model::run`] returns them.
    pub fn output_names(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|(n, _)| n.as_str())
    }

    /// Runs the model on one image given as height × width × channels values (row-major, the
    /// natural layout of pixels). Returns the outputs row-major in their ONNX shapes.
    pub fn run(&self, hwc: &[f32]) -> Result<Vec<Tensor>, NnError> {
        let expected: usize = self.input_shape.iter().product();
        if hwc.len() != expected {
            return Err(NnError::Shape(format!(
                "input has {} values, the model takes {:?} = {expected}",
                hwc.len(),
                self.input_shape
            )));
        }
        let mut slots: Vec<Option<Value>> = vec![None; self.slots];
        slots[self.input] = Some(Value {
            shape: self.input_shape.clone(),
            data: hwc.to_vec(),
            nhwc: true,
        });
        for step in &self.steps {
            let args: Vec<&Value> = step
                .inputs
                .iter()
                .map(|&s| {
                    slots[s]
                        .as_ref()
                        .expect("the graph is topologically ordered")
                })
                .collect();
            let out = ops::run(&step.op, &args)?;
            for &s in &step.frees {
                slots[s] = None;
            }
            slots[step.output] = Some(out);
        }
        Ok(self
            .outputs
            .iter()
            .map(|&(_, s)| {
                let v = slots[s].clone().expect("outputs are kept").into_row_major();
                Tensor {
                    shape: v.shape,
                    data: v.data,
                }
            })
            .collect())
    }
}
