//! Where the cores go during a measurement: the CPU time (user + system, from
//! `/proc/<pid>/stat`) of the server, of the Postgres backends connected to the bench's
//! database, and of the load generator itself, read before and after the measured window.

use std::collections::HashMap;

use sqlx::PgPool;

/// CPU seconds spent during one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    /// The server's, when its pid is known.
    pub server: Option<f64>,
    /// The backends of the bench's database, summed.
    pub postgres: f64,
    /// This process (the load generator).
    pub bench: f64,
}

/// Reads the CPU times of the processes a benchmark involves.
#[derive(Clone)]
pub struct CpuProbe {
    server: Option<i32>,
    pool: PgPool,
    tick: f64,
}

/// The CPU times at one instant, in clock ticks.
pub struct Sample {
    server: Option<u64>,
    postgres: HashMap<i32, u64>,
    bench: u64,
}

impl CpuProbe {
    /// For the server `server` (if known) and the backends of `pool`'s database.
    pub fn new(server: Option<i32>, pool: PgPool) -> Self {
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64;
        Self { server, pool, tick }
    }

    pub async fn sample(&self) -> Sample {
        let pids = crate::store::bench::backend_pids(&self.pool)
            .await
            .unwrap_or_default();
        Sample {
            server: self.server.and_then(ticks),
            postgres: pids
                .into_iter()
                .filter_map(|p| Some((p, ticks(p)?)))
                .collect(),
            bench: ticks(std::process::id() as i32).unwrap_or(0),
        }
    }

    /// The CPU spent since `before`. A backend that connected in between counts from zero;
    /// one that is gone since is not counted (its last ticks are lost with it).
    pub async fn since(&self, before: &Sample) -> Cpu {
        let after = self.sample().await;
        let mut postgres = 0;
        for (pid, now) in &after.postgres {
            postgres += now.saturating_sub(before.postgres.get(pid).copied().unwrap_or(0));
        }
        for (pid, then) in &before.postgres {
            if !after.postgres.contains_key(pid)
                && let Some(now) = ticks(*pid)
            {
                postgres += now.saturating_sub(*then);
            }
        }
        let secs = |t: u64| t as f64 / self.tick;
        Cpu {
            server: match (before.server, after.server) {
                (Some(a), Some(b)) => Some(secs(b.saturating_sub(a))),
                _ => None,
            },
            postgres: secs(postgres),
            bench: secs(after.bench.saturating_sub(before.bench)),
        }
    }
}

/// utime + stime of `pid`, in clock ticks.
fn ticks(pid: i32) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from a `/proc/<pid>/stat` line: fields 14 and 15, counted after the command
/// name, which is in parentheses and may itself hold spaces and parentheses.
fn parse_stat(line: &str) -> Option<u64> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_user_plus_system_ticks() {
        let line =
            "4242 (coffer (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 120 35 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(line), Some(155));
        assert_eq!(parse_stat("garbage"), None);
        let mine = ticks(std::process::id() as i32);
        assert!(mine.is_some());
    }
}
