use std::process::Command;

use crate::support::*;

/// `pipeline-worker dev` runs the job on the in-process cluster (no broker)
/// and prints the enriched records.
#[test]
fn dev_mode_prints_enriched_records() {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .current_dir(repo_root())
        .args(["dev", "--once", "--timeout-secs", "120", "--component"])
        .arg(guest("enrich_rs"))
        .output()
        .expect("run dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dev failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("session_duration_minutes"), "{stdout}");
    assert!(stdout.contains("all "), "{stdout}");
}
