//! The Firehose spool batch reader, as the agent meets it at start: whatever a crash, a full
//! disk or another process left in the spool directory. Opening and reading never panic; a file
//! that cannot be read is set aside (renamed), never silently dropped with its records.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_agent_fuzz::spool::Spool;

fuzz_target!(|data: &[u8]| {
    let base = std::env::var_os("MESHLAT_FUZZ_TMP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("meshlat-fuzz-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("batch-7.fhb"), data).expect("write");
    let (spool, found, _problems) = Spool::open(&dir).expect("open");
    for b in &found {
        if let Ok(records) = spool.read(b.seq) {
            // Every byte of a batch read whole is accounted for: records plus their length words.
            let body: usize = records.iter().map(|r| r.len() + 4).sum();
            assert!(body <= data.len(), "records longer than the file");
        }
    }
    // Nothing vanished: the batch is either still there or renamed aside.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("batch-7.fhb")),
        "the batch file disappeared: {names:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
});
