//! The interpreter against onnxruntime 1.32: each bundled face model run on the same
//! deterministic input; `fixtures/*.expected.f32` hold onnxruntime's outputs (all outputs
//! flattened and concatenated, little-endian f32), written by `fixtures/make.py`.

use afterview_nn::Model;

const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../imaging/models");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The fixture input: `sin(0.37 i) * 0.9` over the height × width × channels values.
fn input(model: &Model) -> Vec<f32> {
    let n: usize = model.input_shape().iter().product();
    (0..n)
        .map(|i| ((i as f64 * 0.37).sin() * 0.9) as f32)
        .collect()
}

fn check(name: &str, shapes: &[&[usize]]) {
    let bytes = std::fs::read(format!("{MODELS}/{name}.onnx")).unwrap();
    let model = Model::from_onnx(&bytes).unwrap();
    let outputs = model.run(&input(&model)).unwrap();
    let got_shapes: Vec<&[usize]> = outputs.iter().map(|t| t.shape.as_slice()).collect();
    assert_eq!(got_shapes, shapes, "{name}");
    let expected: Vec<f32> = std::fs::read(format!("{FIXTURES}/{name}.expected.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let got: Vec<f32> = outputs.into_iter().flat_map(|t| t.data).collect();
    assert_eq!(got.len(), expected.len());
    let worst = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "{name}: worst relative difference {worst}");
    // Same input, same bits.
    let again: Vec<f32> = model
        .run(&input(&model))
        .unwrap()
        .into_iter()
        .flat_map(|t| t.data)
        .collect();
    assert!(
        got.iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn face_detector_matches_onnxruntime() {
    check("face_detection_back", &[&[1, 896, 16], &[1, 896, 1]]);
}

#[test]
fn face_mesh_matches_onnxruntime() {
    check("face_landmark", &[&[1, 1404, 1, 1], &[1, 1, 1, 1]]);
}

#[test]
fn iris_matches_onnxruntime() {
    check("iris_landmark", &[&[1, 213], &[1, 15]]);
}

#[test]
fn wrong_input_size_and_garbage_are_errors() {
    let bytes = std::fs::read(format!("{MODELS}/iris_landmark.onnx")).unwrap();
    let model = Model::from_onnx(&bytes).unwrap();
    assert!(model.run(&[0.0; 10]).is_err());
    assert!(Model::from_onnx(b"not a model").is_err());
    assert!(Model::from_onnx(&bytes[..bytes.len() / 2]).is_err());
}
