use super::*;
use shapes::ShapesSpec;
use std::collections::HashSet;
use std::sync::Arc;

fn spec() -> ShapesSpec {
    ShapesSpec::for_tests()
}

fn written(num: u64, shard_size: u64) -> (tempfile::TempDir, Arc<DataSet>) {
    let dir = tempfile::tempdir().unwrap();
    write_moving_shapes(dir.path(), &spec(), num, shard_size, false).unwrap();
    let ds = Arc::new(DataSet::open(dir.path()).unwrap());
    (dir, ds)
}

#[test]
fn written_shards_read_back_as_generated() {
    let (_dir, ds) = written(50, 16);
    assert_eq!(ds.len(), 50);
    assert_eq!(ds.manifest.shards.len(), 4, "16 + 16 + 16 + 2");
    assert_eq!(ds.latent_shape(), [3, 8, 16, 16]);
    let table = shapes::text_table(&spec());
    for i in [0u64, 15, 16, 33, 49] {
        let v = shapes::generate(&spec(), i);
        let s = ds.sample(i);
        assert_eq!(
            s.latents,
            shapes::pixels_to_latents(&v.pixels, 8, 16),
            "sample {i}"
        );
        assert_eq!(s.label, Some(i64::from(v.class)));
        let c = v.class as usize;
        assert_eq!(s.text, table[c * 128..(c + 1) * 128].to_vec());
    }
}

#[test]
fn ensure_reuses_matching_data_and_regenerates_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ensure_moving_shapes(dir.path(), &spec(), 20, 8, false).unwrap());
    assert!(
        !ensure_moving_shapes(dir.path(), &spec(), 20, 8, false).unwrap(),
        "same spec: reused"
    );
    assert!(
        ensure_moving_shapes(dir.path(), &spec(), 24, 8, false).unwrap(),
        "other count: regenerated"
    );
    assert_eq!(DataSet::open(dir.path()).unwrap().len(), 24);
}

fn open_err(dir: &std::path::Path) -> String {
    match DataSet::open(dir) {
        Ok(_) => panic!("{} opened but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_shard_is_reported_by_name() {
    let (dir, _) = written(20, 8);
    let shard = dir.path().join("shard-00001.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len - 100).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("shard-00001.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn garbage_shard_is_reported_by_name() {
    let (dir, _) = written(20, 8);
    std::fs::write(
        dir.path().join("shard-00000.safetensors"),
        b"definitely not safetensors",
    )
    .unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shard-00000.safetensors"), "{e}");
}

#[test]
fn missing_shard_is_reported_by_name() {
    let (dir, _) = written(20, 8);
    std::fs::remove_file(dir.path().join("shard-00002.safetensors")).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("shard-00002.safetensors") && e.contains("cannot open"),
        "{e}"
    );
}

fn edit_manifest(dir: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("dataset.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn index_that_disagrees_with_the_shards_is_reported() {
    // Shape in the index differs from the shards.
    let (dir, _) = written(20, 8);
    edit_manifest(dir.path(), |v| {
        v["latent_shape"] = serde_json::json!([3, 8, 8, 8])
    });
    let e = open_err(dir.path());
    assert!(
        e.contains("shard-00000.safetensors") && e.contains("`latents` has shape"),
        "{e}"
    );

    // A shard's count differs from its tensors (the total is kept consistent).
    let (dir, _) = written(20, 8);
    edit_manifest(dir.path(), |v| {
        v["shards"][0]["num_samples"] = serde_json::json!(7);
        v["shards"][1]["num_samples"] = serde_json::json!(9);
    });
    let e = open_err(dir.path());
    assert!(e.contains("shard-00000.safetensors"), "{e}");

    // The total disagrees with the shard list.
    let (dir, _) = written(20, 8);
    edit_manifest(dir.path(), |v| v["num_samples"] = serde_json::json!(21));
    let e = open_err(dir.path());
    assert!(
        e.contains("dataset.json") && e.contains("num_samples is 21"),
        "{e}"
    );

    // Not JSON at all, and no index.
    let (dir, _) = written(20, 8);
    std::fs::write(dir.path().join("dataset.json"), "{").unwrap();
    assert!(open_err(dir.path()).contains("dataset.json"));
    std::fs::remove_file(dir.path().join("dataset.json")).unwrap();
    assert!(open_err(dir.path()).contains("dataset.json"));
}

#[test]
fn ranks_get_disjoint_shares_whose_union_is_the_one_rank_batch() {
    let (_dir, ds) = written(100, 32);
    let batch = 8;
    let mut one = Loader::new(ds.clone(), 11, batch, 0, 1).unwrap();
    let mut four: Vec<Loader> = (0..4)
        .map(|r| Loader::new(ds.clone(), 11, batch, r, 4).unwrap())
        .collect();
    assert_eq!(one.steps_per_epoch(), 12);
    let mut epoch0 = HashSet::new();
    for step in 0..30 {
        let global = one.next_batch();
        let parts: Vec<Batch> = four.iter_mut().map(|l| l.next_batch()).collect();
        let joined: Vec<u64> = parts.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(
            joined, global.indices,
            "step {step}: the ranks' shares make up the global batch"
        );
        let distinct: HashSet<u64> = joined.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            batch as usize,
            "step {step}: shares are disjoint"
        );
        assert!(parts
            .iter()
            .all(|b| b.len() == 2 && b.position == global.position));
        if step < 12 {
            assert!(
                distinct.iter().all(|i| epoch0.insert(*i)),
                "no sample twice in an epoch"
            );
        }
    }
    // Epochs are reshuffled.
    assert_ne!(one.epoch_order(0), one.epoch_order(1));
}

#[test]
fn restored_position_continues_exactly() {
    let (_dir, ds) = written(40, 16);
    let mut a = Loader::new(ds.clone(), 2, 8, 1, 2).unwrap();
    let mut seen = Vec::new();
    let mut saved = None;
    for step in 0..13 {
        if step == 7 {
            saved = Some(a.position());
        }
        seen.push(a.next_batch());
    }
    // The position survives serialisation (it goes into checkpoints).
    let json = serde_json::to_string(&saved.unwrap()).unwrap();
    let mut b = Loader::new(ds.clone(), 2, 8, 1, 2).unwrap();
    b.restore(serde_json::from_str(&json).unwrap());
    for expected in &seen[7..] {
        let got = b.next_batch();
        assert_eq!(got.indices, expected.indices);
        assert_eq!(got.latents, expected.latents);
        assert_eq!(got.labels, expected.labels);
    }
    // A position saved on 2 ranks resumes on 1 rank with the same global batches.
    let mut c = Loader::new(ds, 2, 8, 0, 1).unwrap();
    c.restore(seen[7].position);
    assert!(c.next_batch().indices.ends_with(&seen[7].indices));
}

#[test]
fn bad_loader_settings_are_refused() {
    let (_dir, ds) = written(10, 10);
    assert!(matches!(
        Loader::new(ds.clone(), 0, 6, 0, 4),
        Err(LoaderError::Uneven { .. })
    ));
    assert!(matches!(
        Loader::new(ds.clone(), 0, 16, 0, 2),
        Err(LoaderError::TooLarge { .. })
    ));
    assert!(matches!(
        Loader::new(ds, 0, 4, 2, 2),
        Err(LoaderError::BadRank { .. })
    ));
}
