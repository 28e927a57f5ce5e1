//! The operators, on NHWC storage. Each inner loop runs over contiguous channels, which the
//! compiler vectorizes; sums always run in the same order.

use crate::{NnError, Op, Value};

/// A convolution, dense (`group == 1`) or depthwise (`group == channels`).
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    depthwise: bool,
    cin: usize,
    cout: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    /// Top, left, bottom, right.
    pads: [usize; 4],
    /// Dense: `[kh][kw][cin][cout]`; depthwise: `[kh][kw][c]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv {
    /// From ONNX weights `[cout, cin / group, kh, kw]`.
    pub(crate) fn new(
        dims: &[usize],
        w: &[f32],
        bias: Option<&[f32]>,
        group: i64,
        strides: &[usize],
        pads: &[usize],
    ) -> Result<Conv, String> {
        let &[cout, cin_g, kh, kw] = dims else {
            return Err("2-D convolution weights expected".into());
        };
        let (&[sh, sw], &[pt, pl, pb, pr]) = (strides, pads) else {
            return Err("2-D strides and pads expected".into());
        };
        if sh == 0 || sw == 0 || kh == 0 || kw == 0 {
            return Err("zero stride or kernel".into());
        }
        let depthwise = group != 1;
        if depthwise && (cin_g != 1 || usize::try_from(group) != Ok(cout)) {
            return Err(format!("grouped convolution with group {group}"));
        }
        let cin = if depthwise { cout } else { cin_g };
        if w.len() != cout * cin_g * kh * kw {
            return Err("weights do not match their dimensions".into());
        }
        let bias = match bias {
            Some(b) if b.len() == cout => b.to_vec(),
            Some(_) => return Err("bias does not match the output channels".into()),
            None => vec![0.0; cout],
        };
        let mut weights = vec![0f32; w.len()];
        for o in 0..cout {
            for i in 0..cin_g {
                for y in 0..kh {
                    for x in 0..kw {
                        let v = w[((o * cin_g + i) * kh + y) * kw + x];
                        let at = if depthwise {
                            (y * kw + x) * cout + o
                        } else {
                            ((y * kw + x) * cin + i) * cout + o
                        };
                        weights[at] = v;
                    }
                }
            }
        }
        Ok(Conv {
            depthwise,
            cin,
            cout,
            kernel: (kh, kw),
            stride: (sh, sw),
            pads: [pt, pl, pb, pr],
            weights,
            bias,
        })
    }

    fn run(&self, x: &Value) -> Result<Value, NnError> {
        let (n, c, h, w) = dims4(x)?;
        if c != self.cin || n != 1 {
            return Err(NnError::Shape(format!(
                "Conv wants 1 image of {} channels, got {:?}",
                self.cin, x.shape
            )));
        }
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let [pt, pl, pb, pr] = self.pads;
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        if hp < kh || wp < kw {
            return Err(NnError::Shape(format!(
                "Conv kernel larger than {:?}",
                x.shape
            )));
        }
        let (oh, ow) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
        let co = self.cout;
        let mut out = vec![0f32; oh * ow * co];
        let src = &x.data;
        for oy in 0..oh {
            for ox in 0..ow {
                let acc = &mut out[(oy * ow + ox) * co..][..co];
                acc.copy_from_slice(&self.bias);
                for ky in 0..kh {
                    let Some(iy) = (oy * sh + ky).checked_sub(pt).filter(|&v| v < h) else {
                        continue;
                    };
                    for kx in 0..kw {
                        let Some(ix) = (ox * sw + kx).checked_sub(pl).filter(|&v| v < w) else {
                            continue;
                        };
                        let pix = &src[(iy * w + ix) * c..][..c];
                        if self.depthwise {
                            let wt = &self.weights[(ky * kw + kx) * co..][..co];
                            for ((a, &p), &k) in acc.iter_mut().zip(pix).zip(wt) {
                                *a += p * k;
                            }
                        } else {
                            let wt = &self.weights[(ky * kw + kx) * c * co..][..c * co];
                            for (&p, row) in pix.iter().zip(wt.chunks_exact(co)) {
                                for (a, &k) in acc.iter_mut().zip(row) {
                                    *a += p * k;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Value {
            shape: vec![1, co, oh, ow],
            data: out,
            nhwc: true,
        })
    }
}

/// 2-D max pooling.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub(crate) kernel: (usize, usize),
    pub(crate) stride: (usize, usize),
    /// ONNX `SAME_UPPER` (output = ceil(input / stride), extra padding at the end); else
    /// `VALID`.
    pub(crate) same_upper: bool,
}

impl Pool {
    fn run(&self, x: &Value) -> Result<Value, NnError> {
        let (n, c, h, w) = dims4(x)?;
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        if n != 1 || kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            return Err(NnError::Shape(format!("MaxPool on {:?}", x.shape)));
        }
        let (oh, ow, pt, pl) = if self.same_upper {
            let (oh, ow) = (h.div_ceil(sh), w.div_ceil(sw));
            let th = ((oh - 1) * sh + kh).saturating_sub(h);
            let tw = ((ow - 1) * sw + kw).saturating_sub(w);
            (oh, ow, th / 2, tw / 2)
        } else {
            if h < kh || w < kw {
                return Err(NnError::Shape(format!(
                    "MaxPool kernel larger than {:?}",
                    x.shape
                )));
            }
            ((h - kh) / sh + 1, (w - kw) / sw + 1, 0, 0)
        };
        let mut out = vec![f32::NEG_INFINITY; oh * ow * c];
        for oy in 0..oh {
            for ox in 0..ow {
                let acc = &mut out[(oy * ow + ox) * c..][..c];
                for ky in 0..kh {
                    let Some(iy) = (oy * sh + ky).checked_sub(pt).filter(|&v| v < h) else {
                        continue;
                    };
                    for kx in 0..kw {
                        let Some(ix) = (ox * sw + kx).checked_sub(pl).filter(|&v| v < w) else {
                            continue;
                        };
                        let pix = &x.data[(iy * w + ix) * c..][..c];
                        for (a, &p) in acc.iter_mut().zip(pix) {
                            *a = a.max(p);
                        }
                    }
                }
            }
        }
        Ok(Value {
            shape: vec![1, c, oh, ow],
            data: out,
            nhwc: true,
        })
    }
}

fn dims4(x: &Value) -> Result<(usize, usize, usize, usize), NnError> {
    match (x.nhwc, &x.shape[..]) {
        (true, &[n, c, h, w]) => Ok((n, c, h, w)),
        _ => Err(NnError::Shape(format!(
            "an image tensor (NCHW, from a convolution) expected, got {:?}",
            x.shape
        ))),
    }
}

fn pad(x: &Value, begin: [usize; 4], end: [usize; 4]) -> Result<Value, NnError> {
    let (n, c, h, w) = dims4(x)?;
    if n != 1 || begin[0] != 0 || end[0] != 0 {
        return Err(NnError::Shape("Pad of the batch dimension".into()));
    }
    let (oc, oh, ow) = (
        c + begin[1] + end[1],
        h + begin[2] + end[2],
        w + begin[3] + end[3],
    );
    let mut out = vec![0f32; oh * ow * oc];
    for y in 0..h {
        for xx in 0..w {
            let dst = ((y + begin[2]) * ow + xx + begin[3]) * oc + begin[1];
            out[dst..dst + c].copy_from_slice(&x.data[(y * w + xx) * c..][..c]);
        }
    }
    Ok(Value {
        shape: vec![1, oc, oh, ow],
        data: out,
        nhwc: true,
    })
}

fn transpose(x: Value, perm: &[usize]) -> Result<Value, NnError> {
    let rank = x.shape.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank
        || perm
            .iter()
            .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
    {
        return Err(NnError::Shape(format!(
            "Transpose {perm:?} of {:?}",
            x.shape
        )));
    }
    // NCHW -> NHWC of a tensor already stored NHWC: only the shape changes.
    if x.nhwc && perm == [0, 2, 3, 1] {
        let s = &x.shape;
        return Ok(Value {
            shape: vec![s[0], s[2], s[3], s[1]],
            data: x.data,
            nhwc: false,
        });
    }
    let x = x.into_row_major();
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * x.shape[i + 1];
    }
    let mut out = Vec::with_capacity(x.data.len());
    let mut idx = vec![0usize; rank];
    for _ in 0..x.data.len() {
        let src: usize = (0..rank).map(|d| idx[d] * in_strides[perm[d]]).sum();
        out.push(x.data[src]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(Value {
        shape,
        data: out,
        nhwc: false,
    })
}

fn reshape(x: Value, spec: &[i64]) -> Result<Value, NnError> {
    let x = x.into_row_major();
    let total = x.data.len();
    let err = || NnError::Shape(format!("Reshape {spec:?} of {:?}", x.shape));
    let mut shape = vec![];
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                shape.push(1);
            }
            0 => shape.push(*x.shape.get(i).ok_or_else(err)?),
            d if d > 0 => shape.push(usize::try_from(d).map_err(|_| err())?),
            _ => return Err(err()),
        }
    }
    let known: usize = shape.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(err());
        }
        shape[i] = total / known;
    } else if known != total {
        return Err(err());
    }
    Ok(Value {
        shape,
        data: x.data,
        nhwc: false,
    })
}

fn concat(args: &[&Value], axis: i64) -> Result<Value, NnError> {
    let parts: Vec<Value> = args.iter().map(|v| (*v).clone().into_row_major()).collect();
    let rank = parts[0].shape.len();
    let axis = if axis < 0 { axis + rank as i64 } else { axis };
    let axis = usize::try_from(axis)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| NnError::Shape(format!("Concat axis {axis} of rank {rank}")))?;
    for p in &parts {
        let same = p.shape.len() == rank
            && (0..rank).all(|d| d == axis || p.shape[d] == parts[0].shape[d]);
        if !same {
            return Err(NnError::Shape(format!(
                "Concat of {:?} and {:?}",
                parts[0].shape, p.shape
            )));
        }
    }
    let outer: usize = parts[0].shape[..axis].iter().product();
    let mut shape = parts[0].shape.clone();
    shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
    let mut out = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for p in &parts {
            let inner: usize = p.shape[axis..].iter().product();
            out.extend_from_slice(&p.data[o * inner..(o + 1) * inner]);
        }
    }
    Ok(Value {
        shape,
        data: out,
        nhwc: false,
    })
}

fn add(a: &Value, b: &Value) -> Result<Value, NnError> {
    if a.shape != b.shape {
        return Err(NnError::Shape(format!(
            "Add of {:?} and {:?}",
            a.shape, b.shape
        )));
    }
    let (a, b) = if a.nhwc == b.nhwc {
        (a.clone(), b)
    } else {
        (a.clone().into_row_major(), &b.clone().into_row_major())
    };
    let mut out = a;
    for (x, &y) in out.data.iter_mut().zip(&b.data) {
        *x += y;
    }
    Ok(out)
}

fn prelu(x: &Value, alpha: &[f32]) -> Result<Value, NnError> {
    let (_, c, _, _) = dims4(x)?;
    if alpha.len() != c {
        return Err(NnError::Shape(format!(
            "PRelu with {} slopes on {:?}",
            alpha.len(),
            x.shape
        )));
    }
    let mut out = x.clone();
    for px in out.data.chunks_exact_mut(c) {
        for (v, &a) in px.iter_mut().zip(alpha) {
            if *v < 0.0 {
                *v *= a;
            }
        }
    }
    Ok(out)
}

/// Runs one operation.
pub(crate) fn run(op: &Op, args: &[&Value]) -> Result<Value, NnError> {
    match op {
        Op::Conv(c) => c.run(args[0]),
        Op::PRelu(a) => prelu(args[0], a),
        Op::Relu => {
            let mut out = args[0].clone();
            for v in &mut out.data {
                *v = v.max(0.0);
            }
            Ok(out)
        }
        Op::Add => match args {
            [a, b] => add(a, b),
            _ => Err(NnError::Shape("Add takes two inputs".into())),
        },
        Op::MaxPool(p) => p.run(args[0]),
        Op::Pad { begin, end } => pad(args[0], *begin, *end),
        Op::Transpose(perm) => transpose(args[0].clone(), perm),
        Op::Reshape(spec) => reshape(args[0].clone(), spec),
        Op::Concat(axis) => concat(args, *axis),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nhwc(c: usize, h: usize, w: usize, data: Vec<f32>) -> Value {
        Value {
            shape: vec![1, c, h, w],
            data,
            nhwc: true,
        }
    }

    #[test]
    fn dense_conv_matches_a_direct_sum() {
        // 2 input channels, 3x3 image, 2 output channels, 2x2 kernel, stride 1, pad 1 bottom/right.
        let x: Vec<f32> = (0..18).map(|i| i as f32 * 0.5 - 3.0).collect();
        let w: Vec<f32> = (0..16).map(|i| (i as f32 - 7.0) * 0.25).collect(); // [2,2,2,2]
        let conv = Conv::new(
            &[2, 2, 2, 2],
            &w,
            Some(&[0.5, -1.0]),
            1,
            &[1, 1],
            &[0, 0, 1, 1],
        )
        .unwrap();
        let out = conv.run(&nhwc(2, 3, 3, x.clone())).unwrap();
        assert_eq!(out.shape, vec![1, 2, 3, 3]);
        for oy in 0..3 {
            for ox in 0..3 {
                for o in 0..2 {
                    let mut s = [0.5, -1.0][o];
                    for i in 0..2 {
                        for ky in 0..2 {
                            for kx in 0..2 {
                                let (iy, ix) = (oy + ky, ox + kx);
                                if iy < 3 && ix < 3 {
                                    s += x[(iy * 3 + ix) * 2 + i]
                                        * w[((o * 2 + i) * 2 + ky) * 2 + kx];
                                }
                            }
                        }
                    }
                    let got = out.data[(oy * 3 + ox) * 2 + o];
                    assert!((got - s).abs() < 1e-5, "{got} vs {s}");
                }
            }
        }
    }

    #[test]
    fn depthwise_conv_keeps_channels_apart() {
        let x = vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0]; // 2x2, 2 channels
        let w = vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]; // ch0: sum, ch1: bottom-right
        let conv = Conv::new(&[2, 1, 2, 2], &w, None, 2, &[1, 1], &[0, 0, 0, 0]).unwrap();
        let out = conv.run(&nhwc(2, 2, 2, x)).unwrap();
        assert_eq!(out.data, vec![10.0, 40.0]);
    }

    #[test]
    fn same_upper_pooling_rounds_up() {
        let x: Vec<f32> = (0..9).map(|i| i as f32).collect(); // 3x3, one channel
        let p = Pool {
            kernel: (2, 2),
            stride: (2, 2),
            same_upper: true,
        };
        let out = p.run(&nhwc(1, 3, 3, x)).unwrap();
        assert_eq!(out.shape, vec![1, 1, 2, 2]);
        assert_eq!(out.data, vec![4.0, 5.0, 7.0, 8.0]);
    }

    #[test]
    fn layout_changes_agree() {
        // A 1x2x2x3 NCHW tensor stored NHWC, transposed to NHWC and reshaped flat.
        let stored: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let v = nhwc(2, 2, 3, stored.clone());
        let t = transpose(v.clone(), &[0, 2, 3, 1]).unwrap();
        assert_eq!(
            (t.shape.clone(), t.data.clone()),
            (vec![1, 2, 3, 2], stored.clone())
        );
        let r = v.clone().into_row_major();
        assert_eq!(r.data[..6], [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let g = transpose(r, &[0, 2, 3, 1]).unwrap();
        assert_eq!(g.data, stored);
        let flat = reshape(t, &[1, -1]).unwrap();
        assert_eq!(flat.shape, vec![1, 12]);
        assert!(reshape(v, &[5, -1]).is_err());
    }

    #[test]
    fn channel_padding_appends_zero_channels() {
        let v = nhwc(1, 1, 2, vec![7.0, 8.0]);
        let p = pad(&v, [0, 0, 0, 0], [0, 2, 0, 0]).unwrap();
        assert_eq!(p.shape, vec![1, 3, 1, 2]);
        assert_eq!(p.data, vec![7.0, 0.0, 0.0, 8.0, 0.0, 0.0]);
    }
}
