//! The visualization tasks end to end on a real worker: progress, results, stored records and
//! pictures, ownership, every failure code, comparisons, and the Gemini engine against the mock.

use std::sync::Arc;
use std::time::Duration;

use afterview_core::catalog::Catalog;
use afterview_core::tasks::{EngineKind, GENERATE_COMPARISON, GENERATE_VISUALIZATION};
use afterview_engine::memory::MemoryBackend;
use afterview_engine::{
    Client, Registry, ResultMeta, SendOptions, Shutdown, TaskState, Worker, WorkerConfig,
};
use afterview_gemini::mock::{MockGemini, Scenario};
use afterview_gemini::{GeminiClient, GeminiConfig};
use afterview_imaging::intake::{Limits, decode_png, intake};
use afterview_jobs::{Deps, PreviewSettings};
use afterview_store::sqlite::SqliteMetadata;
use afterview_store::{BlobStore, ImageRecord, MetadataStore, ObjectBlobStore, image_key};
use serde_json::{Value, json};

const PORTRAITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/portraits");

struct Harness {
    client: Client,
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    shutdown: Shutdown,
    _dir: std::path::PathBuf,
}

impl Harness {
    async fn start(preview: PreviewSettings) -> Self {
        Self::start_with_blobs(preview, |_| Arc::new(ObjectBlobStore::memory())).await
    }

    /// A harness whose blob store `blobs` makes (it is given the metadata store).
    async fn start_with_blobs(
        preview: PreviewSettings,
        blobs: impl FnOnce(Arc<dyn MetadataStore>) -> Arc<dyn BlobStore>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("afterview-jobs-{}", uuid_like()));
        let meta: Arc<dyn MetadataStore> =
            Arc::new(SqliteMetadata::open(&dir.join("metadata.db")).unwrap());
        let blobs = blobs(meta.clone());
        let deps = Arc::new(Deps {
            meta: meta.clone(),
            blobs: blobs.clone(),
            catalog: Arc::new(Catalog::builtin()),
            preview,
            report_fonts: afterview_jobs::ReportFonts::bundled(),
        });
        let mut registry = Registry::with_builtins();
        afterview_jobs::register(&mut registry, deps);
        let backend = Arc::new(MemoryBackend::default());
        let client = Client::new(backend.clone(), backend.clone()).with_routes_from(&registry);
        let cfg = WorkerConfig {
            node: "jobs@test".into(),
            queues: registry.queues(),
            concurrency: 2,
            idle_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        };
        let shutdown = Shutdown::new();
        let w = Worker::new(cfg, backend.clone(), backend, registry);
        tokio::spawn(w.run(shutdown.clone()));
        Self {
            client,
            meta,
            blobs,
            shutdown,
            _dir: dir,
        }
    }

    async fn upload(&self, owner: &str, file: &str) -> String {
        let bytes = std::fs::read(format!("{PORTRAITS}/{file}")).unwrap();
        self.upload_bytes(owner, &bytes).await
    }

    async fn upload_bytes(&self, owner: &str, bytes: &[u8]) -> String {
        let n = intake(bytes, &Limits::default()).unwrap();
        let id = afterview_core::ids::new_id();
        self.blobs
            .put(&image_key(&id), n.png.clone().into())
            .await
            .unwrap();
        self.meta
            .insert_image(&ImageRecord {
                id: id.clone(),
                owner: owner.into(),
                blob_key: image_key(&id),
                width: n.width,
                height: n.height,
                bytes: n.png.len() as u64,
                source_format: n.source_format.as_str().into(),
                created_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
        id
    }

    async fn run(&self, task: &str, kwargs: Value) -> (ResultMeta, Vec<(u8, String)>) {
        // Watch before sending, so no state change can be missed.
        let id = afterview_core::ids::new_id();
        let mut watch = self.client.watch(&id);
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first.status, TaskState::Pending);
        let opts = SendOptions {
            task_id: Some(id.clone()),
            ..SendOptions::default()
        };
        self.client
            .send_task(task, vec![], kwargs.as_object().unwrap().clone(), opts)
            .await
            .unwrap();
        let mut progress = vec![];
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), watch.next())
                .await
                .expect("task finishes")
                .unwrap()
                .unwrap();
            if let Some(p) = m.progress() {
                progress.push(p);
            }
            if m.status.is_terminal() {
                return (m, progress);
            }
        }
    }

    /// Sends `task` as task `id` and waits for its end (at most a minute).
    async fn send_as(&self, id: &str, task: &str, kwargs: &Value) -> ResultMeta {
        let opts = SendOptions {
            task_id: Some(id.to_owned()),
            ..SendOptions::default()
        };
        self.client
            .send_task(task, vec![], kwargs.as_object().unwrap().clone(), opts)
            .await
            .unwrap();
        self.client.wait(id, Duration::from_secs(60)).await.unwrap()
    }

    async fn picture(&self, url: &str) -> image::RgbImage {
        let id = url
            .trim_start_matches("/api/visualizations/")
            .trim_end_matches("/image");
        let bytes = self
            .blobs
            .get(&afterview_store::visualization_key(id))
            .await
            .unwrap()
            .expect("picture stored");
        decode_png(&bytes).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.shutdown.trigger();
    }
}

fn uuid_like() -> String {
    afterview_core::ids::new_id()
}

fn code(m: &ResultMeta) -> String {
    m.error_info().map(|e| e.code).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visualization_reports_progress_and_stores_its_picture() {
    let h = Harness::start(PreviewSettings::default()).await;
    let image_id = h.upload("alice", "grace_hopper.jpg").await;
    let (m, progress) = h
        .run(
            GENERATE_VISUALIZATION,
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"}),
        )
        .await;
    assert_eq!(m.status, TaskState::Success, "{m:?}");
    let pcts: Vec<u8> = progress.iter().map(|p| p.0).collect();
    assert_eq!(pcts, [0, 20, 80, 100], "{progress:?}");
    assert_eq!(progress[1].1, "Generating surgical preview");
    let r = &m.result;
    assert_eq!(r["procedure_id"], "rhinoplasty");
    assert_eq!(r["engine"], "local");
    assert_eq!(
        r["before_image_url"],
        format!("/api/images/{image_id}/content")
    );
    assert_eq!(
        r["id"],
        m.task_id.as_str(),
        "the visualization id is derived from the task id"
    );
    let after = h.picture(r["after_image_url"].as_str().unwrap()).await;
    assert_eq!(after.dimensions(), (512, 600));
    let rec = h
        .meta
        .get_visualization("alice", r["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&rec.result, r);
    assert!(
        h.meta
            .get_visualization("bob", r["id"].as_str().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    // The corner carries the label.
    let corner = after.get_pixel(480, 580);
    assert!(
        corner.0.iter().all(|c| *c < 140) || corner.0.iter().all(|c| *c > 200),
        "label box in the corner: {corner:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_gives_the_same_picture() {
    let h = Harness::start(PreviewSettings::default()).await;
    let image_id = h.upload("alice", "astronaut.png").await;
    let args = json!({"image_id": image_id, "procedure_id": "lip-augmentation", "user_id": "alice", "options": {"intensity": "pronounced"}});
    let (a, _) = h.run(GENERATE_VISUALIZATION, args.clone()).await;
    let (b, _) = h.run(GENERATE_VISUALIZATION, args).await;
    assert_ne!(a.result["id"], b.result["id"]);
    let pa = h
        .picture(a.result["after_image_url"].as_str().unwrap())
        .await;
    let pb = h
        .picture(b.result["after_image_url"].as_str().unwrap())
        .await;
    assert_eq!(pa, pb, "deterministic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_their_codes() {
    let h = Harness::start(PreviewSettings::default()).await;
    let image_id = h.upload("alice", "astronaut.png").await;
    let coffee = h.upload("alice", "no_face_coffee.png").await;
    let cases = [
        (
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "bob"}),
            "image_not_found",
        ),
        (
            json!({"image_id": "no-such-image", "procedure_id": "rhinoplasty", "user_id": "alice"}),
            "image_not_found",
        ),
        (
            json!({"image_id": image_id, "procedure_id": "liposuction", "user_id": "alice"}),
            "unknown_procedure",
        ),
        (
            json!({"image_id": coffee, "procedure_id": "rhinoplasty", "user_id": "alice"}),
            "no_face_detected",
        ),
        (
            // The operator did not allow Gemini: a request cannot choose it.
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice", "options": {"engine": "gemini"}}),
            "invalid_options",
        ),
        (
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice", "options": {"intensity": "max"}}),
            "invalid_arguments",
        ),
        (
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice",
                "options": {"control_points": {"right_eye": [9000, 1], "left_eye": [10, 1], "nose_tip": [1, 1], "mouth_right": [1, 1], "mouth_left": [1, 1]}}}),
            "invalid_control_points",
        ),
    ];
    for (args, want) in cases {
        let (m, _) = h.run(GENERATE_VISUALIZATION, args.clone()).await;
        assert_eq!(
            (m.status.clone(), code(&m)),
            (TaskState::Failure, want.to_owned()),
            "{args}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comparison_makes_each_preview_and_a_labelled_composite() {
    let h = Harness::start(PreviewSettings::default()).await;
    let image_id = h.upload("alice", "grace_hopper.jpg").await;
    let (m, progress) = h
        .run(
            GENERATE_COMPARISON,
            json!({"image_id": image_id, "procedure_ids": ["rhinoplasty", "brow-lift", "facelift"], "user_id": "alice"}),
        )
        .await;
    assert_eq!(m.status, TaskState::Success, "{m:?}");
    let pcts: Vec<u8> = progress.iter().map(|p| p.0).collect();
    assert_eq!(pcts.first(), Some(&0));
    assert!(
        pcts.contains(&20) && pcts.contains(&80) && pcts.last() == Some(&100),
        "{pcts:?}"
    );
    assert!(pcts.windows(2).all(|w| w[0] < w[1]), "{pcts:?}");
    let items = m.result["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1]["procedure_id"], "brow-lift");
    for it in items {
        let pic = h.picture(it["after_image_url"].as_str().unwrap()).await;
        assert_eq!(pic.dimensions(), (512, 600));
    }
    let composite = h
        .picture(m.result["comparison_image_url"].as_str().unwrap())
        .await;
    // Four panels side by side, each cropped to the face (not the whole photo).
    assert!(
        composite.width() > 4 * composite.height() * 3 / 5 && composite.height() >= 256,
        "{:?}",
        composite.dimensions()
    );
    let rec = h
        .meta
        .get_visualization("alice", m.result["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.kind.as_str(), rec.procedure_ids.len()),
        ("comparison", 3)
    );

    for bad in [
        json!(["rhinoplasty"]),
        json!(["rhinoplasty", "rhinoplasty"]),
        json!(["a", "b", "c", "d", "e"]),
    ] {
        let (m, _) = h
            .run(
                GENERATE_COMPARISON,
                json!({"image_id": image_id, "procedure_ids": bad, "user_id": "alice"}),
            )
            .await;
        assert_eq!(code(&m), "invalid_procedure_count", "{bad}");
    }
}

async fn gemini_harness(scenarios: Vec<Scenario>) -> (Harness, MockGemini) {
    let mock = MockGemini::start("test-key", scenarios).await;
    let mut cfg = GeminiConfig::new("test-key");
    cfg.base_url = mock.base_url.clone();
    cfg.initial_backoff = Duration::from_millis(10);
    let preview = PreviewSettings {
        default_engine: EngineKind::Gemini,
        gemini: Some(GeminiClient::new(cfg).unwrap()),
        label: None,
        ..PreviewSettings::default()
    };
    (Harness::start(preview).await, mock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_previews_are_blended_back_only_inside_the_treated_region() {
    let (h, mock) = gemini_harness(vec![Scenario::RateLimited("0.1s"), Scenario::Ok]).await;
    let image_id = h.upload("alice", "grace_hopper.jpg").await;
    let (m, progress) = h
        .run(
            GENERATE_VISUALIZATION,
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"}),
        )
        .await;
    assert_eq!(m.status, TaskState::Success, "{m:?}");
    assert_eq!(m.result["engine"], "gemini");
    assert_eq!(progress[1].1, "Generating surgical preview with AI");
    assert_eq!(mock.requests().len(), 2, "one 429, then success");
    assert!(mock.requests()[1].prompt.contains("rhinoplasty"));
    let after = h
        .picture(m.result["after_image_url"].as_str().unwrap())
        .await;
    let bytes = std::fs::read(format!("{PORTRAITS}/grace_hopper.jpg")).unwrap();
    let original = decode_png(&intake(&bytes, &Limits::default()).unwrap().png).unwrap();
    let changed: Vec<(u32, u32)> = after
        .enumerate_pixels()
        .filter(|(x, y, p)| *p != original.get_pixel(*x, *y))
        .map(|(x, y, _)| (x, y))
        .collect();
    assert!(
        !changed.is_empty(),
        "the generated (tinted) picture shows inside the region"
    );
    let (minx, maxx) = (
        changed.iter().map(|c| c.0).min().unwrap(),
        changed.iter().map(|c| c.0).max().unwrap(),
    );
    let (miny, maxy) = (
        changed.iter().map(|c| c.1).min().unwrap(),
        changed.iter().map(|c| c.1).max().unwrap(),
    );
    assert!(
        minx > 180 && maxx < 360 && miny > 170 && maxy < 320,
        "only around the nose: {minx}-{maxx} x {miny}-{maxy}"
    );
}

/// Where the Gemini blend took the answer (its tint raised red by 40), how far the green
/// channel, which the tint leaves alone, is from the photo's: small when the answer's face lies
/// where the photo's is.
fn misplaced(after: &image::RgbImage, original: &image::RgbImage) -> (usize, f64) {
    let greens: Vec<f64> = after
        .enumerate_pixels()
        .filter(|(x, y, p)| p.0[0] >= original.get_pixel(*x, *y).0[0].saturating_add(30))
        .map(|(x, y, p)| f64::from(p.0[1].abs_diff(original.get_pixel(x, y).0[1])))
        .collect();
    let n = greens.len();
    (n, greens.iter().sum::<f64>() / n.max(1) as f64)
}

/// Gemini answers at its own size and framing (1024 × 1024 for a 512 × 600 photo, here also
/// turned by 2°): its face is laid over the photo's by their landmarks, so the edited nose
/// is blended where the nose is (stretched to the photo's size, it landed beside it and the
/// preview showed both). An answer showing no face is refused. A large photo is sent at most
/// 1536 pixels long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_answers_are_laid_over_the_photo_by_the_face() {
    let (h, mock) = gemini_harness(vec![
        Scenario::OkReframed,
        Scenario::OkWithoutFace,
        Scenario::Ok,
    ])
    .await;
    let bytes = std::fs::read(format!("{PORTRAITS}/grace_hopper.jpg")).unwrap();
    let original = decode_png(&intake(&bytes, &Limits::default()).unwrap().png).unwrap();
    let image_id = h.upload("alice", "grace_hopper.jpg").await;
    let kwargs = json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"});
    let (m, _) = h.run(GENERATE_VISUALIZATION, kwargs.clone()).await;
    assert_eq!(m.status, TaskState::Success, "{m:?}");
    let after = h
        .picture(m.result["after_image_url"].as_str().unwrap())
        .await;
    assert_eq!(after.dimensions(), original.dimensions());
    let (n, off) = misplaced(&after, &original);
    assert!(n > 500, "the answer shows around the nose ({n} pixels)");
    assert!(
        off < 3.0,
        "the answer's nose lies on the photo's: {off:.2} apart"
    );
    assert_eq!(mock.requests()[0].image_size, (512, 600));

    let (m, _) = h.run(GENERATE_VISUALIZATION, kwargs).await;
    assert_eq!(code(&m), "gemini_bad_response", "{m:?}");

    let big = image::imageops::resize(&original, 2048, 2400, image::imageops::FilterType::Triangle);
    let mut png = std::io::Cursor::new(vec![]);
    big.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let big_id = h.upload_bytes("alice", png.get_ref()).await;
    let (m, _) = h
        .run(
            GENERATE_VISUALIZATION,
            json!({"image_id": big_id, "procedure_id": "rhinoplasty", "user_id": "alice"}),
        )
        .await;
    assert_eq!(m.status, TaskState::Success, "{m:?}");
    assert_eq!(mock.requests()[2].image_size, (1311, 1536));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_failures_have_their_codes() {
    for (scenario, want) in [
        (Scenario::PromptBlocked("SAFETY"), "gemini_blocked"),
        (
            Scenario::OutputBlocked("IMAGE_PROHIBITED_CONTENT"),
            "gemini_blocked",
        ),
        (Scenario::QuotaPerDay, "gemini_quota_exhausted"),
    ] {
        let (h, _mock) = gemini_harness(vec![scenario]).await;
        let image_id = h.upload("alice", "astronaut.png").await;
        let (m, _) = h
            .run(
                GENERATE_VISUALIZATION,
                json!({"image_id": image_id, "procedure_id": "facelift", "user_id": "alice"}),
            )
            .await;
        assert_eq!(code(&m), want);
    }
}

/// A procedure the photo cannot show (a facelift of a headshot cropped under the chin: the
/// neck is not in the photo) fails before Gemini is called: nothing is paid for a preview
/// that would be thrown away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_is_not_called_for_a_feature_the_photo_does_not_show() {
    let (h, mock) = gemini_harness(vec![]).await;
    let bytes = std::fs::read(format!("{PORTRAITS}/grace_hopper.jpg")).unwrap();
    let photo = decode_png(&intake(&bytes, &Limits::default()).unwrap().png).unwrap();
    let lm = afterview_imaging::face::detect(&photo).unwrap();
    let bottom = (lm.chin().y + 2.0 * lm.frame().px_per_mm).round() as u32;
    let cropped = image::imageops::crop_imm(&photo, 0, 0, photo.width(), bottom).to_image();
    let image_id = h
        .upload_bytes("alice", &afterview_imaging::intake::encode_png(&cropped))
        .await;
    let (m, _) = h
        .run(
            GENERATE_VISUALIZATION,
            json!({"image_id": image_id, "procedure_id": "facelift", "user_id": "alice"}),
        )
        .await;
    assert_eq!(code(&m), "feature_not_visible");
    assert!(mock.requests().is_empty(), "no call paid for");
}

/// A task whose time limit leaves no room for a Gemini call fails (and retries) as
/// `gemini_unavailable`, not as a time limit, which would never be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_calls_end_before_the_tasks_time_limit() {
    let (h, mock) = gemini_harness(vec![]).await;
    let image_id = h.upload("alice", "grace_hopper.jpg").await;
    let id = afterview_core::ids::new_id();
    let mut watch = h.client.watch(&id);
    let opts = SendOptions {
        task_id: Some(id.clone()),
        timelimit: afterview_engine::TimeLimits {
            hard: Some(12.0),
            soft: Some(8.0),
        },
        ..SendOptions::default()
    };
    let kwargs = json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"});
    h.client
        .send_task(
            GENERATE_VISUALIZATION,
            vec![],
            kwargs.as_object().unwrap().clone(),
            opts,
        )
        .await
        .unwrap();
    let first_end = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("the task moves on")
            .unwrap()
            .unwrap();
        if m.status == TaskState::Retry || m.status.is_terminal() {
            break m;
        }
    };
    assert_eq!(first_end.status, TaskState::Retry, "{first_end:?}");
    assert_eq!(code(&first_end), "gemini_unavailable");
    assert!(
        mock.requests().is_empty(),
        "no call started without the time for it"
    );
}

// ------------------------------------------------------------------------------ exports

use afterview_core::tasks::{GENERATE_COST_INFOGRAPHIC, GENERATE_EXPORT};

async fn export_bytes(h: &Harness, result: &Value) -> Vec<u8> {
    let id = result["id"].as_str().unwrap();
    let rec = h
        .meta
        .get_export("alice", id)
        .await
        .unwrap()
        .expect("export record");
    assert_eq!(rec.size, result["size_bytes"].as_u64().unwrap());
    h.blobs
        .get(&rec.blob_key)
        .await
        .unwrap()
        .expect("export blob")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_made_from_singles_and_comparisons() {
    let h = Harness::start(PreviewSettings::default()).await;
    let image_id = h.upload("alice", "grace_hopper.jpg").await;
    let (single, _) = h
        .run(
            GENERATE_VISUALIZATION,
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"}),
        )
        .await;
    let (cmp, _) = h
        .run(GENERATE_COMPARISON, json!({"image_id": image_id, "procedure_ids": ["brow-lift", "facelift"], "user_id": "alice"}))
        .await;
    let (m, progress) = h
        .run(
            GENERATE_EXPORT,
            json!({"visualization_ids": [single.result["id"], cmp.result["id"]], "format": "pdf", "include_costs": true,
                   "patient": {"name": "Test Patient", "clinic": "Test Clinic"}, "user_id": "alice"}),
        )
        .await;
    assert_eq!(m.status, TaskState::Success, "{m:?}");
    assert_eq!(
        progress.iter().map(|p| p.0).collect::<Vec<_>>(),
        [10, 30, 90, 100]
    );
    assert_eq!(
        (m.result["kind"].as_str(), m.result["format"].as_str()),
        (Some("report"), Some("pdf"))
    );
    assert_eq!(
        m.result["download_url"],
        format!("/api/exports/{}/download", m.result["id"].as_str().unwrap())
    );
    let pdf = export_bytes(&h, &m.result).await;
    assert!(pdf.starts_with(b"%PDF-"));
    // Deleting the photo deletes the report made from it.
    let d = h
        .meta
        .delete_image("alice", &image_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.exports, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infographics_in_both_formats() {
    let h = Harness::start(PreviewSettings::default()).await;
    let (png, progress) = h.run(GENERATE_COST_INFOGRAPHIC, json!({"procedure_ids": ["rhinoplasty", "otoplasty"], "format": "png", "user_id": "alice"})).await;
    assert_eq!(png.status, TaskState::Success, "{png:?}");
    assert_eq!(
        progress.iter().map(|p| p.0).collect::<Vec<_>>(),
        [10, 30, 90, 100]
    );
    assert!(export_bytes(&h, &png.result).await.starts_with(b"\x89PNG"));
    let (svg, _) = h
        .run(GENERATE_COST_INFOGRAPHIC, json!({"procedure_ids": ["facelift"], "format": "svg", "colors": ["#000000", "#111111", "#222222", "#333333"], "user_id": "alice"}))
        .await;
    let text = String::from_utf8(export_bytes(&h, &svg.result).await).unwrap();
    assert!(text.contains("<svg") && text.contains("Facelift") && text.contains("#333333"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_failures_have_codes_and_leave_nothing_behind() {
    let h = Harness::start(PreviewSettings::default()).await;
    let image_id = h.upload("alice", "astronaut.png").await;
    let (v, _) = h
        .run(
            GENERATE_VISUALIZATION,
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"}),
        )
        .await;
    let vid = v.result["id"].clone();
    let cases = [
        (
            GENERATE_EXPORT,
            json!({"visualization_ids": [vid], "user_id": "bob"}),
            "visualization_not_found",
        ),
        (
            GENERATE_EXPORT,
            json!({"visualization_ids": ["nope"], "user_id": "alice"}),
            "visualization_not_found",
        ),
        (
            GENERATE_EXPORT,
            json!({"visualization_ids": [vid], "format": "docx", "user_id": "alice"}),
            "unsupported_export_format",
        ),
        (
            GENERATE_EXPORT,
            json!({"visualization_ids": [vid], "paper": "tabloid", "user_id": "alice"}),
            "invalid_options",
        ),
        (
            GENERATE_EXPORT,
            json!({"visualization_ids": [vid], "patient": {"ssn": "123"}, "user_id": "alice"}),
            "invalid_arguments",
        ),
        (
            GENERATE_COST_INFOGRAPHIC,
            json!({"procedure_ids": ["liposuction"], "user_id": "alice"}),
            "unknown_procedure",
        ),
        (
            GENERATE_COST_INFOGRAPHIC,
            json!({"procedure_ids": ["facelift"], "format": "gif", "user_id": "alice"}),
            "unsupported_export_format",
        ),
        (
            GENERATE_COST_INFOGRAPHIC,
            json!({"procedure_ids": ["facelift"], "colors": ["red"], "user_id": "alice"}),
            "invalid_options",
        ),
        (
            GENERATE_COST_INFOGRAPHIC,
            json!({"procedure_ids": ["facelift"], "colors": ["#1", "#2", "#3", "#4"], "user_id": "alice"}),
            "invalid_options",
        ),
    ];
    for (task, args, want) in cases {
        let (m, _) = h.run(task, args.clone()).await;
        assert_eq!(
            (m.status.clone(), code(&m)),
            (TaskState::Failure, want.to_owned()),
            "{args}"
        );
    }
    assert!(
        h.meta.list_exports("alice", 10).await.unwrap().is_empty(),
        "no record of a failed export"
    );
    assert!(h.meta.list_exports("bob", 10).await.unwrap().is_empty());
}

/// A blob store through which the owner deletes their photo (as `DELETE /api/images/{id}`
/// does: the records, then the files they named) just before the first file under `prefix` is
/// written: the moment a task has checked the photo for the last time before saving.
struct DeleteDuringPut {
    inner: ObjectBlobStore,
    meta: Arc<dyn MetadataStore>,
    prefix: &'static str,
    photo: std::sync::Mutex<Option<(String, String)>>,
    /// Instead, the owner deletes the record being saved (as `DELETE /api/visualizations/{id}`
    /// or `DELETE /api/exports/{id}` does: the record, then its file, not there yet).
    record: std::sync::Mutex<Option<String>>,
    /// Every key written under `prefix`.
    written: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl BlobStore for DeleteDuringPut {
    async fn put(&self, key: &str, bytes: bytes::Bytes) -> Result<(), afterview_store::StoreError> {
        let photo = if key.starts_with(self.prefix) {
            self.written.lock().unwrap().push(key.to_owned());
            self.photo.lock().unwrap().take()
        } else {
            None
        };
        let record = if key.starts_with(self.prefix) {
            self.record.lock().unwrap().take()
        } else {
            None
        };
        if let Some(owner) = record {
            let id = key[self.prefix.len()..].split('.').next().unwrap();
            let gone = if self.prefix == "exports/" {
                self.meta.delete_export(&owner, id).await?
            } else {
                self.meta.delete_visualization(&owner, id).await?
            };
            let k = gone.expect("the record being saved");
            self.inner.delete(&k).await?;
        }
        if let Some((owner, id)) = photo {
            let deleted = self
                .meta
                .delete_image(&owner, &id)
                .await?
                .expect("the photo");
            for k in deleted.blob_keys {
                self.inner.delete(&k).await?;
            }
        }
        self.inner.put(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, afterview_store::StoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), afterview_store::StoreError> {
        self.inner.delete(key).await
    }
    async fn ping(&self) -> Result<(), afterview_store::StoreError> {
        self.inner.ping().await
    }
}

/// A photo deleted while its preview or report is being written leaves no file behind: the
/// delete found the record but not yet the file, so the task removes what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_deleted_while_its_results_are_written_leaves_no_file() {
    deleted_while_written(false).await;
}

/// So does the preview or report itself, deleted while its file is written: the task fails
/// (the record is gone) and removes the file no record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_deleted_while_it_is_written_leaves_no_file() {
    deleted_while_written(true).await;
}

/// Deletes the photo (or, with `record`, the result being saved) as the first file under each
/// prefix is written, and checks that no file stays.
async fn deleted_while_written(record: bool) {
    for prefix in ["visualizations/", "exports/"] {
        let inner = ObjectBlobStore::memory();
        let hook = std::sync::Arc::new(std::sync::OnceLock::<Arc<DeleteDuringPut>>::new());
        let h = {
            let (inner, hook) = (inner.clone(), hook.clone());
            Harness::start_with_blobs(PreviewSettings::default(), move |meta| {
                let b = Arc::new(DeleteDuringPut {
                    inner,
                    meta,
                    prefix,
                    photo: std::sync::Mutex::new(None),
                    record: std::sync::Mutex::new(None),
                    written: std::sync::Mutex::new(vec![]),
                });
                let _ = hook.set(b.clone());
                b
            })
            .await
        };
        let image_id = h.upload("alice", "astronaut.png").await;
        let task = if prefix == "exports/" {
            let (v, _) = h
                .run(
                    GENERATE_VISUALIZATION,
                    json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"}),
                )
                .await;
            assert_eq!(v.status, TaskState::Success);
            (
                GENERATE_EXPORT,
                json!({"visualization_ids": [v.result["id"]], "user_id": "alice"}),
            )
        } else {
            (
                GENERATE_VISUALIZATION,
                json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"}),
            )
        };
        let want = if record {
            *hook.get().unwrap().record.lock().unwrap() = Some("alice".into());
            if prefix == "exports/" {
                "export_not_found"
            } else {
                "visualization_not_found"
            }
        } else {
            *hook.get().unwrap().photo.lock().unwrap() = Some(("alice".into(), image_id.clone()));
            "image_not_found"
        };
        let (m, _) = h.run(task.0, task.1).await;
        assert_eq!(
            (m.status.clone(), code(&m)),
            (TaskState::Failure, want.to_owned()),
            "{prefix}"
        );
        let b = hook.get().unwrap();
        assert!(b.photo.lock().unwrap().is_none(), "the delete ran");
        assert!(b.record.lock().unwrap().is_none(), "the delete ran");
        let written = b.written.lock().unwrap().clone();
        assert!(!written.is_empty(), "{prefix}: the task wrote its file");
        for key in written {
            assert!(
                inner.get(&key).await.unwrap().is_none(),
                "{prefix}: {key} left after its photo was deleted"
            );
        }
    }
}

/// `afterview.delete_files` (what the API hands over when the blob store could not remove a
/// deleted record's files at once) removes them, and refuses keys outside the product's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_files_task_removes_files_and_nothing_else() {
    let h = Harness::start(PreviewSettings::default()).await;
    // A slow store's deletes (30 s each, retries included) fit in its time limits, whose end
    // is not retried: an hour, not a preview's five minutes.
    let task = afterview_jobs::DeleteFilesTask(Arc::new(Deps {
        meta: h.meta.clone(),
        blobs: h.blobs.clone(),
        catalog: Arc::new(Catalog::builtin()),
        preview: PreviewSettings::default(),
        report_fonts: afterview_jobs::ReportFonts::bundled(),
    }));
    let opts = afterview_engine::Task::options(&task);
    assert!(
        opts.soft_time_limit >= Duration::from_secs(3000),
        "{opts:?}"
    );
    assert!(opts.time_limit > opts.soft_time_limit, "{opts:?}");
    for k in [
        "images/a.png",
        "thumbnails/images/a.jpg",
        "exports/b.pdf",
        "settings/keep.json",
    ] {
        h.blobs.put(k, vec![1u8, 2, 3].into()).await.unwrap();
    }
    let send = |keys: Value| {
        let client = h.client.clone();
        async move {
            let kwargs = json!({"keys": keys, "user_id": "alice"});
            let id = client
                .send_task(
                    afterview_core::tasks::DELETE_FILES,
                    vec![],
                    kwargs.as_object().unwrap().clone(),
                    SendOptions::default(),
                )
                .await
                .unwrap();
            client.wait(&id, Duration::from_secs(20)).await.unwrap()
        }
    };
    let done = send(json!([
        "images/a.png",
        "thumbnails/images/a.jpg",
        "exports/b.pdf"
    ]))
    .await;
    assert_eq!(done.status, TaskState::Success, "{done:?}");
    assert!(h.blobs.get("images/a.png").await.unwrap().is_none());
    assert!(
        h.blobs
            .get("thumbnails/images/a.jpg")
            .await
            .unwrap()
            .is_none()
    );
    assert!(h.blobs.get("exports/b.pdf").await.unwrap().is_none());
    for bad in [
        json!(["settings/keep.json"]),
        json!(["images/../settings/keep.json"]),
    ] {
        let r = send(bad.clone()).await;
        assert_eq!(r.status, TaskState::Failure, "{bad}");
        assert_eq!(r.error_info().unwrap().code, "invalid_arguments");
    }
    assert!(h.blobs.get("settings/keep.json").await.unwrap().is_some());
    h.shutdown.trigger();
}

/// A blob store through which the user cancels a report (a revoke that does not terminate, as
/// `POST /api/tasks/{id}/cancel` sends) while the report reads its preview's picture.
struct CancelDuringGet {
    inner: ObjectBlobStore,
    client: std::sync::OnceLock<Client>,
    task: std::sync::Mutex<Option<String>>,
    /// Instead: an operator's revoke that terminates the run while it stores its preview.
    kill_on_put: std::sync::Mutex<Option<String>>,
    /// Instead: the user's cancel while the run stores its first preview.
    cancel_on_put: std::sync::Mutex<Option<String>>,
    /// The previews' keys written.
    puts: std::sync::Mutex<Vec<String>>,
}

impl CancelDuringGet {
    /// Revokes task `id`, when one is given, then waits `wait`.
    async fn revoke(&self, id: Option<String>, terminate: bool, wait: Duration) {
        let Some(id) = id else { return };
        let client = self.client.get().expect("the client");
        client.revoke(&id, terminate).await.expect("revoke");
        tokio::time::sleep(wait).await;
    }
}

/// A harness whose blob store is a [`CancelDuringGet`] given the harness's client.
async fn cancel_harness() -> (Harness, Arc<CancelDuringGet>) {
    let hook = Arc::new(std::sync::OnceLock::<Arc<CancelDuringGet>>::new());
    let h = {
        let hook = hook.clone();
        Harness::start_with_blobs(PreviewSettings::default(), move |_meta| {
            let b = Arc::new(CancelDuringGet {
                inner: ObjectBlobStore::memory(),
                client: std::sync::OnceLock::new(),
                task: std::sync::Mutex::new(None),
                kill_on_put: std::sync::Mutex::new(None),
                cancel_on_put: std::sync::Mutex::new(None),
                puts: std::sync::Mutex::default(),
            });
            let _ = hook.set(b.clone());
            b
        })
        .await
    };
    let b = hook.get().unwrap().clone();
    let _ = b.client.set(h.client.clone());
    (h, b)
}

#[async_trait::async_trait]
impl BlobStore for CancelDuringGet {
    async fn put(&self, key: &str, bytes: bytes::Bytes) -> Result<(), afterview_store::StoreError> {
        if key.starts_with("visualizations/") {
            self.puts.lock().unwrap().push(key.to_owned());
            // A slow store: the run is stopped before this write ends.
            let kill = self.kill_on_put.lock().unwrap().take();
            self.revoke(kill, true, Duration::from_secs(3)).await;
            // The run sees the cancellation once this write is done.
            let cancel = self.cancel_on_put.lock().unwrap().take();
            self.revoke(cancel, false, Duration::from_millis(300)).await;
        }
        self.inner.put(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, afterview_store::StoreError> {
        if key.starts_with("visualizations/") {
            // The run sees the cancellation (the revocation reaches the worker).
            let task = self.task.lock().unwrap().take();
            self.revoke(task, false, Duration::from_millis(300)).await;
        }
        self.inner.get(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), afterview_store::StoreError> {
        self.inner.delete(key).await
    }
    async fn ping(&self) -> Result<(), afterview_store::StoreError> {
        self.inner.ping().await
    }
}

/// The user's cancel of a report that is being made stops it before anything is saved: the
/// task ends REVOKED, not SUCCESS, and no export is stored. A preview stopped while it saves
/// leaves no record behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_cancelled_while_it_is_made_saves_nothing() {
    use afterview_core::tasks::GENERATE_EXPORT;
    let (h, b) = cancel_harness().await;
    let image_id = h.upload("alice", "astronaut.png").await;
    let (v, _) = h
        .run(
            GENERATE_VISUALIZATION,
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"}),
        )
        .await;
    assert_eq!(v.status, TaskState::Success);
    let id = afterview_core::ids::new_id();
    *b.task.lock().unwrap() = Some(id.clone());
    let kwargs = json!({"visualization_ids": [v.result["id"]], "user_id": "alice"});
    let end = h.send_as(&id, GENERATE_EXPORT, &kwargs).await;
    assert!(b.task.lock().unwrap().is_none(), "the cancel was sent");
    assert_eq!(end.status, TaskState::Revoked, "{end:?}");
    assert!(h.meta.list_exports("alice", 10).await.unwrap().is_empty());

    // A preview whose run is terminated while it stores its picture leaves no record naming a
    // picture that does not exist.
    let id = afterview_core::ids::new_id();
    *b.kill_on_put.lock().unwrap() = Some(id.clone());
    let kwargs = json!({"image_id": image_id, "procedure_id": "rhinoplasty", "user_id": "alice"});
    let end = h.send_as(&id, GENERATE_VISUALIZATION, &kwargs).await;
    assert!(
        b.kill_on_put.lock().unwrap().is_none(),
        "the revoke was sent"
    );
    assert_eq!(end.status, TaskState::Revoked, "{end:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h
        .meta
        .get_visualization("alice", &id)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stopped run's record stays"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The user's cancel of a comparison while it stores its previews: the previews already
/// stored go too (before, they stayed in the owner's history, each a single preview), and the
/// task ends REVOKED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comparison_cancelled_while_it_saves_leaves_none_of_its_previews() {
    let (h, b) = cancel_harness().await;
    let image_id = h.upload("alice", "astronaut.png").await;
    let id = afterview_core::ids::new_id();
    *b.cancel_on_put.lock().unwrap() = Some(id.clone());
    let kwargs = json!({"image_id": image_id, "procedure_ids": ["rhinoplasty", "brow-lift"], "user_id": "alice"});
    let end = h.send_as(&id, GENERATE_COMPARISON, &kwargs).await;
    assert!(
        b.cancel_on_put.lock().unwrap().is_none(),
        "the cancel was sent"
    );
    assert_eq!(end.status, TaskState::Revoked, "{end:?}");
    let left = h.meta.list_visualizations("alice", 10).await.unwrap();
    assert!(left.is_empty(), "previews left: {left:?}");
    let written = b.puts.lock().unwrap().clone();
    assert!(
        !written.is_empty(),
        "a preview was stored before the cancel"
    );
    for key in written {
        assert!(h.blobs.get(&key).await.unwrap().is_none(), "{key} left");
    }
}
