//! The worker's memory budget, checked once at start-up: the sum of every
//! pipeline's worst case must fit `runtime.memory_budget_bytes` (default:
//! the cgroup's memory limit), or the worker refuses to start and lists
//! each pipeline's share.
//!
//! A pipeline's worst case is what its sandboxes can commit at once:
//! - one live instance per sandbox thread, each up to `limits.memory_bytes`
//!   (the cap covers all its linear memories and tables);
//! - one execution stack per thread (`max_stack_bytes` + the host's
//!   headroom): stacks are reused without zeroing, so touched pages stay;
//! - with the pooling allocator, the table bytes each pool slot keeps
//!   resident. The pool's memory slots are address space reserved per slot
//!   (cap + guard), not memory: they are decommitted when an instance ends.

use std::path::Path;

use crate::config::{Config, PipelineConfig};
use crate::sandbox::HOST_STACK_HEADROOM;

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("config key `runtime.memory_budget_bytes`: the pipelines' worst case ({total} bytes, {total_mib} MiB) exceeds the memory budget ({budget} bytes, {budget_mib} MiB, {from}): {shares}. Lower a pipeline's concurrency or limits.memory_bytes, or raise the budget")]
    Over {
        total: u64,
        total_mib: u64,
        budget: u64,
        budget_mib: u64,
        from: String,
        shares: String,
    },
}

/// One pipeline's part of the worst case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub name: String,
    pub bytes: u64,
}

/// What pipeline `p` can commit at most (see the module docs).
pub fn worst_case(p: &PipelineConfig, pooling: bool) -> u64 {
    let threads = p.concurrency.max(1) as u64;
    let memory = threads.saturating_mul(p.limits.memory_bytes);
    let stacks = threads.saturating_mul((p.limits.max_stack_bytes + HOST_STACK_HEADROOM) as u64);
    let pool = if pooling {
        crate::sandbox::pool_resident_bytes(p.concurrency.max(1) as u32)
    } else {
        0
    };
    memory.saturating_add(stacks).saturating_add(pool)
}

pub fn shares(config: &Config) -> Vec<Share> {
    config
        .pipelines
        .iter()
        .enumerate()
        .map(|(index, p)| Share {
            index,
            name: p.name.clone(),
            bytes: worst_case(p, config.runtime.pooling),
        })
        .collect()
}

/// Limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded
/// down to a page).
const UNLIMITED: u64 = 1 << 62;

/// The budget and where it came from: the config key, else the cgroup
/// limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), else none.
pub fn budget(config: &Config) -> Option<(u64, String)> {
    if let Some(b) = config.runtime.memory_budget_bytes {
        return Some((b, "runtime.memory_budget_bytes".into()));
    }
    cgroup_limit(Path::new("/sys/fs/cgroup"))
}

fn cgroup_limit(root: &Path) -> Option<(u64, String)> {
    for file in ["memory.max", "memory/memory.limit_in_bytes"] {
        let path = root.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let text = text.trim();
        if text == "max" {
            return None;
        }
        if let Ok(v) = text.parse::<u64>() {
            return (v < UNLIMITED).then(|| (v, format!("cgroup limit {}", path.display())));
        }
    }
    None
}

/// Refuses a config whose pipelines could commit more than the budget.
pub fn check(config: &Config) -> Result<Vec<Share>, BudgetError> {
    let shares = shares(config);
    let Some((budget, source)) = budget(config) else {
        return Ok(shares);
    };
    let total = shares.iter().fold(0u64, |a, s| a.saturating_add(s.bytes));
    if total <= budget {
        return Ok(shares);
    }
    let mut listed: Vec<&Share> = shares.iter().collect();
    listed.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    Err(BudgetError::Over {
        total,
        total_mib: total >> 20,
        budget,
        budget_mib: budget >> 20,
        from: source,
        shares: listed
            .iter()
            .map(|s| format!("pipelines[{}] ({}): {} MiB", s.index, s.name, s.bytes >> 20))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(budget: Option<u64>, pipelines: &[(&str, usize, u64)]) -> Config {
        let mut text = String::from("[kafka]\nbrokers = \"b:9092\"\n[runtime]\n");
        if let Some(b) = budget {
            text.push_str(&format!("memory_budget_bytes = {b}\n"));
        }
        for (name, c, mem) in pipelines {
            text.push_str(&format!(
                "[[pipelines]]\nname = \"{name}\"\ninput_topics = [\"i-{name}\"]\noutput_topics = [\"o\"]\ndead_letter_topic = \"d\"\ncomponent = \"x.wasm\"\nconcurrency = {c}\n[pipelines.limits]\nmemory_bytes = {mem}\n"
            ));
        }
        Config::from_str_with_env(&text, Path::new("w.toml"), []).unwrap()
    }

    #[test]
    fn worst_case_is_threads_times_cap_plus_stacks_and_pool() {
        let c = config(None, &[("a", 4, 256 << 20)]);
        let s = shares(&c);
        let per_thread = (256 << 20) + (512 << 10) + HOST_STACK_HEADROOM as u64;
        assert_eq!(
            s[0].bytes,
            4 * per_thread + crate::sandbox::pool_resident_bytes(4)
        );
    }

    #[test]
    fn over_budget_names_every_pipeline_and_its_share() {
        let c = config(
            Some(1 << 30),
            &[("small", 1, 64 << 20), ("big", 8, 256 << 20)],
        );
        let e = check(&c).unwrap_err().to_string();
        assert!(e.contains("runtime.memory_budget_bytes"), "{e}");
        let s = shares(&c);
        for share in &s {
            let line = format!(
                "pipelines[{}] ({}): {} MiB",
                share.index,
                share.name,
                share.bytes >> 20
            );
            assert!(e.contains(&line), "{line} in {e}");
        }
        assert!(e.find("(big)") < e.find("(small)"), "largest first: {e}");
        assert!(e.contains("1024 MiB"), "{e}");
        let ok = config(
            Some(4 << 30),
            &[("small", 1, 64 << 20), ("big", 8, 256 << 20)],
        );
        assert_eq!(check(&ok).unwrap().len(), 2);
    }

    #[test]
    fn cgroup_limits_are_read_and_unlimited_is_none() {
        let dir = std::env::temp_dir().join(format!("pw-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory")).unwrap();
        std::fs::write(
            dir.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(cgroup_limit(&dir), None);
        std::fs::write(dir.join("memory.max"), "2147483648\n").unwrap();
        assert_eq!(cgroup_limit(&dir).map(|b| b.0), Some(2 << 30));
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_limit(&dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
