//! Just enough protobuf to read an ONNX `ModelProto`: the wire format (varints, fixed
//! 32/64-bit, length-delimited) and the handful of ONNX messages and fields a CNN graph uses.
//! Unknown fields are skipped, as protobuf requires; packed and unpacked repeated scalars are
//! both accepted.

use crate::NnError;

/// One field's value (64-bit fixed fields are skipped: no field read here uses them).
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(what: &str) -> NnError {
    NnError::Format(what.to_owned())
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, NnError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], NnError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| bad("field runs past the end of its message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field, or `None` at the end of the message.
    fn field(&mut self) -> Result<Option<(u32, Value<'a>)>, NnError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| bad("field number out of range"))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length overflow"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            t => return Err(bad(&format!("unsupported wire type {t}"))),
        };
        Ok(Some((number, value)))
    }
}

fn string(v: &Value<'_>) -> Result<String, NnError> {
    match v {
        Value::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8")),
        _ => Err(bad("expected a string")),
    }
}

/// Appends a repeated int64 field (packed or not).
fn push_ints(v: &Value<'_>, out: &mut Vec<i64>) -> Result<(), NnError> {
    match v {
        Value::Varint(x) => out.push(*x as i64),
        Value::Bytes(b) => {
            let mut r = Reader::new(b);
            while r.pos < b.len() {
                out.push(r.varint()? as i64);
            }
        }
        _ => return Err(bad("expected int64 values")),
    }
    Ok(())
}

/// Appends a repeated float field (packed or not).
fn push_floats(v: &Value<'_>, out: &mut Vec<f32>) -> Result<(), NnError> {
    match v {
        Value::Fixed32(x) => out.push(f32::from_bits(*x)),
        Value::Bytes(b) if b.len() % 4 == 0 => out.extend(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        ),
        _ => return Err(bad("expected float values")),
    }
    Ok(())
}

/// ONNX `TensorProto` element types this reader decodes.
const FLOAT: i64 = 1;
const INT64: i64 = 7;

/// A constant tensor (an initializer or an attribute value).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorProto {
    pub(crate) name: String,
    pub(crate) dims: Vec<i64>,
    pub(crate) data: TensorData,
}

/// The values of a constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TensorData {
    Float(Vec<f32>),
    Int64(Vec<i64>),
}

fn tensor(buf: &[u8]) -> Result<TensorProto, NnError> {
    let mut r = Reader::new(buf);
    let (mut name, mut dims, mut dtype) = (String::new(), vec![], 0i64);
    let (mut floats, mut ints, mut raw) = (vec![], vec![], None);
    while let Some((n, v)) = r.field()? {
        match (n, &v) {
            (1, _) => push_ints(&v, &mut dims)?,
            (2, Value::Varint(x)) => dtype = *x as i64,
            (4, _) => push_floats(&v, &mut floats)?,
            (7, _) => push_ints(&v, &mut ints)?,
            (8, _) => name = string(&v)?,
            (9, Value::Bytes(b)) => raw = Some(*b),
            (14, Value::Varint(1)) => return Err(bad("external tensor data is not supported")),
            _ => {}
        }
    }
    let count = dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    });
    let count = count.ok_or_else(|| bad(&format!("tensor {name}: bad dimensions {dims:?}")))?;
    let data = match (dtype, raw) {
        (FLOAT, Some(b)) if b.len() == count * 4 => TensorData::Float(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        (INT64, Some(b)) if b.len() == count * 8 => TensorData::Int64(
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        (FLOAT, None) if floats.len() == count => TensorData::Float(floats),
        (INT64, None) if ints.len() == count => TensorData::Int64(ints),
        (FLOAT | INT64, _) => {
            return Err(bad(&format!("tensor {name}: data does not match {dims:?}")));
        }
        (t, _) => return Err(bad(&format!("tensor {name}: unsupported element type {t}"))),
    };
    Ok(TensorProto { name, dims, data })
}

/// A node attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(String),
    Other,
}

fn attribute(buf: &[u8]) -> Result<(String, Attr), NnError> {
    let mut r = Reader::new(buf);
    let mut name = String::new();
    let mut ints = vec![];
    let mut value = Attr::Other;
    while let Some((n, v)) = r.field()? {
        match (n, &v) {
            (1, _) => name = string(&v)?,
            (2, Value::Fixed32(x)) => value = Attr::Float(f32::from_bits(*x)),
            (3, Value::Varint(x)) => value = Attr::Int(*x as i64),
            (4, _) => value = Attr::Str(string(&v)?),
            (8, _) => push_ints(&v, &mut ints)?,
            _ => {}
        }
    }
    if !ints.is_empty() {
        value = Attr::Ints(ints);
    }
    Ok((name, value))
}

/// One operation of the graph.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeProto {
    pub(crate) op_type: String,
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    pub(crate) attrs: Vec<(String, Attr)>,
}

fn node(buf: &[u8]) -> Result<NodeProto, NnError> {
    let mut r = Reader::new(buf);
    let mut n = NodeProto {
        op_type: String::new(),
        inputs: vec![],
        outputs: vec![],
        attrs: vec![],
    };
    while let Some((f, v)) = r.field()? {
        match f {
            1 => n.inputs.push(string(&v)?),
            2 => n.outputs.push(string(&v)?),
            4 => n.op_type = string(&v)?,
            5 => match v {
                Value::Bytes(b) => n.attrs.push(attribute(b)?),
                _ => return Err(bad("attribute is not a message")),
            },
            _ => {}
        }
    }
    Ok(n)
}

/// A graph input or output: its name and static shape (`0` for a symbolic dimension).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValueInfo {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
}

fn value_info(buf: &[u8]) -> Result<ValueInfo, NnError> {
    let mut name = String::new();
    let mut shape = vec![];
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.field()? {
        match (f, v) {
            (1, v) => name = string(&v)?,
            // TypeProto.tensor_type(1).shape(2).dim(1).dim_value(1)
            (2, Value::Bytes(ty)) => {
                for tt in submessages(ty, 1)? {
                    for sh in submessages(tt, 2)? {
                        for dim in submessages(sh, 1)? {
                            let mut d = Reader::new(dim);
                            let mut value = 0usize;
                            while let Some((k, x)) = d.field()? {
                                if let (1, Value::Varint(x)) = (k, x) {
                                    value = usize::try_from(x).map_err(|_| bad("dim overflow"))?;
                                }
                            }
                            shape.push(value);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ValueInfo { name, shape })
}

fn submessages(buf: &[u8], number: u32) -> Result<Vec<&[u8]>, NnError> {
    let mut r = Reader::new(buf);
    let mut out = vec![];
    while let Some((f, v)) = r.field()? {
        if let (true, Value::Bytes(b)) = (f == number, v) {
            out.push(b);
        }
    }
    Ok(out)
}

/// The parts of an ONNX model the interpreter needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GraphProto {
    pub(crate) nodes: Vec<NodeProto>,
    pub(crate) initializers: Vec<TensorProto>,
    pub(crate) inputs: Vec<ValueInfo>,
    pub(crate) outputs: Vec<ValueInfo>,
}

/// Parses a serialized `ModelProto` and returns its graph.
pub(crate) fn model(buf: &[u8]) -> Result<GraphProto, NnError> {
    let graphs = submessages(buf, 7)?;
    let [graph] = graphs.as_slice() else {
        return Err(bad("expected exactly one graph in the model"));
    };
    let mut g = GraphProto {
        nodes: vec![],
        initializers: vec![],
        inputs: vec![],
        outputs: vec![],
    };
    let mut r = Reader::new(graph);
    while let Some((f, v)) = r.field()? {
        let Value::Bytes(b) = v else { continue };
        match f {
            1 => g.nodes.push(node(b)?),
            5 => g.initializers.push(tensor(b)?),
            11 => g.inputs.push(value_info(b)?),
            12 => g.outputs.push(value_info(b)?),
            _ => {}
        }
    }
    // Inputs that are initializers (older exporters list them) are not graph inputs.
    g.inputs
        .retain(|i| !g.initializers.iter().any(|t| t.name == i.name));
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(n: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(n << 3 | 2), out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    #[test]
    fn reads_packed_and_unpacked_repeated_ints() {
        let mut m = vec![];
        bytes_field(1, b"pads", &mut m);
        // Unpacked: two varint fields 8.
        varint(8 << 3, &mut m);
        varint(3, &mut m);
        varint(8 << 3, &mut m);
        varint(300, &mut m);
        let (name, v) = attribute(&m).unwrap();
        assert_eq!(name, "pads");
        assert_eq!(v, Attr::Ints(vec![3, 300]));

        let mut packed = vec![];
        varint(3, &mut packed);
        varint(300, &mut packed);
        let mut m = vec![];
        bytes_field(1, b"pads", &mut m);
        bytes_field(8, &packed, &mut m);
        assert_eq!(attribute(&m).unwrap().1, Attr::Ints(vec![3, 300]));
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let mut m = vec![];
        bytes_field(8, b"name", &mut m);
        for cut in 0..m.len() {
            let _ = tensor(&m[..cut]);
        }
        assert!(tensor(&[0x42, 0x10, 1]).is_err());
        assert!(model(&[0xff; 12]).is_err());
    }

    #[test]
    fn tensor_data_must_match_its_dims() {
        let mut m = vec![];
        varint(1 << 3, &mut m);
        varint(2, &mut m);
        varint(2 << 3, &mut m);
        varint(1, &mut m); // float
        bytes_field(9, &[0; 4], &mut m); // one float for two dims
        assert!(tensor(&m).is_err());
    }
}
