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

/// Ctrl-C in `pipeline-worker dev` stops the worker, then the in-process
/// cluster: exit 0 within 2 s, no ERROR lines.
#[test]
fn dev_mode_ctrl_c_exits_cleanly_and_fast() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .current_dir(repo_root())
        .args(["dev", "--timeout-secs", "120", "--component"])
        .arg(guest("enrich_rs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dev");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let serving = l.contains("Ctrl-C to stop");
            let _ = tx.send(l);
            if serving {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("dev never reached serving; stdout:\n{}", out.join("\n")));
        let serving = l.contains("Ctrl-C to stop");
        out.push(l);
        if serving {
            break;
        }
    }
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("dev did not exit within 10 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let stderr = err_thread.join().unwrap();
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.contains("ERROR")),
        "error lines after Ctrl-C:\n{stderr}"
    );
}
