//! The reload pipeline: a file change, SIGHUP and `nvmf-tgt reload` all queue a request; one
//! worker thread serves them one at a time (requests that arrive during a reload are
//! coalesced into the next one) through the same steps as `check`: read, parse, schema,
//! rules, then plan against what is serving, then apply.

use std::hash::Hasher as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::apply::Live;
use super::systemd;
use crate::config::{self, Environment, Purpose};
use crate::reconcile::{Plan, plan};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    File,
    Signal,
    Rpc,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    /// The plan was applied.
    Applied,
    /// The file declares what is already serving.
    Unchanged,
    /// The file is invalid: nothing changed.
    Invalid,
    /// The plan needs a restart: nothing changed.
    Refused,
    /// Applying failed and was rolled back: nothing changed.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub result: ReloadResult,
    pub trigger: Trigger,
    /// The generation serving after this attempt.
    pub generation: u64,
    pub hash: String,
    pub at_unix_s: u64,
    pub message: String,
    /// The steps applied (or that would have been).
    pub steps: Vec<String>,
    pub warnings: Vec<String>,
    /// `check`'s text for an invalid file.
    pub diagnostics: Option<String>,
    /// How long the attempt took, reading the file included.
    pub duration_ms: f64,
}

impl Outcome {
    pub fn changed_nothing(&self) -> bool {
        self.result != ReloadResult::Applied
    }
}

/// What `plan` answers for a declaration a client sent.
#[derive(Debug)]
pub struct TextPlan {
    pub plan: Plan,
    /// `check`'s text for its warnings, if any.
    pub diagnostics: Option<String>,
    /// What this plan could not tell.
    pub notes: Vec<String>,
}

/// The applied configuration's identity, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub generation: u64,
    pub hash: String,
    pub at_unix_s: u64,
}

struct Request {
    trigger: Trigger,
    reply: Option<Sender<Outcome>>,
}

/// Owns the live state and serves reload requests.
pub struct Reloader {
    path: PathBuf,
    live: Mutex<Live>,
    state: Mutex<State>,
    requests: Mutex<Sender<Request>>,
}

struct State {
    applied: Applied,
    /// Hash of the bytes last read, so rewriting the file unchanged does nothing.
    last_seen_hash: String,
    last_attempt: Option<Outcome>,
}

impl Reloader {
    /// Starts the worker thread. `text` is the file as it was when the target started.
    pub fn start(path: &Path, live: Live, text: &str) -> Arc<Self> {
        let (tx, rx) = channel();
        let hash = hash_bytes(text.as_bytes());
        let reloader = Arc::new(Self {
            path: path.to_owned(),
            live: Mutex::new(live),
            state: Mutex::new(State {
                applied: Applied {
                    generation: 1,
                    hash: hash.clone(),
                    at_unix_s: unix_now(),
                },
                last_seen_hash: hash,
                last_attempt: None,
            }),
            requests: Mutex::new(tx),
        });
        let worker = Arc::clone(&reloader);
        let spawned = std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || worker.serve(&rx));
        if let Err(err) = spawned {
            error!(%err, "cannot start the reload thread; reloads are disabled");
        }
        reloader
    }

    /// Queues a reload and returns at once.
    pub fn request(&self, trigger: Trigger) {
        let _ = self.sender().send(Request {
            trigger,
            reply: None,
        });
    }

    /// Queues a reload and waits for its outcome.
    pub fn request_and_wait(&self, trigger: Trigger) -> Option<Outcome> {
        let (tx, rx) = channel();
        self.sender()
            .send(Request {
                trigger,
                reply: Some(tx),
            })
            .ok()?;
        rx.recv().ok()
    }

    fn sender(&self) -> Sender<Request> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn serve(&self, requests: &Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            if first.trigger == Trigger::File {
                // Editors write a temp file and rename it, or truncate and write in pieces:
                // let the burst settle before reading.
                std::thread::sleep(Duration::from_millis(200));
            }
            let mut batch = vec![first];
            batch.extend(requests.try_iter());
            let only_file = batch.iter().all(|r| r.trigger == Trigger::File);
            let trigger = batch
                .iter()
                .map(|r| r.trigger)
                .find(|t| *t != Trigger::File)
                .unwrap_or(Trigger::File);
            if let Some(outcome) = self.reload(trigger, only_file) {
                for request in batch {
                    if let Some(reply) = request.reply {
                        let _ = reply.send(outcome.clone());
                    }
                }
            }
        }
    }

    /// One reload. `None` when a file event found the bytes unchanged (nothing to report).
    fn reload(&self, trigger: Trigger, skip_if_unchanged: bool) -> Option<Outcome> {
        let started = Instant::now();
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            // Deleted on the way to being recreated: the create event follows.
            Err(err) if skip_if_unchanged && err.kind() == std::io::ErrorKind::NotFound => {
                return None;
            }
            Err(err) => {
                let outcome = self.outcome(
                    trigger,
                    ReloadResult::Invalid,
                    String::new(),
                    format!("cannot read {}: {err}", self.path.display()),
                );
                return Some(self.record(outcome, started));
            }
        };
        let hash = hash_bytes(&text);
        {
            let mut state = self.lock_state();
            if skip_if_unchanged && state.last_seen_hash == hash {
                return None;
            }
            state.last_seen_hash.clone_from(&hash);
        }
        systemd::notify_reloading();
        let outcome = self.reload_text(trigger, hash, text);
        let outcome = self.record(outcome, started);
        systemd::notify_ready(&format!("reload {:?}: {}", outcome.result, outcome.message));
        Some(outcome)
    }

    fn reload_text(&self, trigger: Trigger, hash: String, bytes: Vec<u8>) -> Outcome {
        let file = self.path.display().to_string();
        let env = Environment::this_machine();
        let (config, report) = match String::from_utf8(bytes) {
            Ok(text) => config::check_text(&file, text, Purpose::Run, &env),
            Err(_) => {
                return self.outcome(
                    trigger,
                    ReloadResult::Invalid,
                    hash,
                    format!("{file} is not UTF-8 text"),
                );
            }
        };
        let Some(new) = config else {
            let mut outcome = self.outcome(
                trigger,
                ReloadResult::Invalid,
                hash,
                format!(
                    "{file} is invalid ({}); the running configuration stays",
                    count(report.errors(), "error")
                ),
            );
            outcome.diagnostics = Some(report.render());
            return outcome;
        };
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let plan = plan(&live.config, &new);
        let steps: Vec<String> = plan.steps.iter().map(ToString::to_string).collect();
        if plan.is_refused() {
            let fields: Vec<String> = plan
                .restart_required
                .iter()
                .map(|f| match config::locate(&report.text, &f.pointer) {
                    Some((line, col)) => format!("{} ({file}:{line}:{col})", f.what),
                    None => f.what.clone(),
                })
                .collect();
            let mut outcome = self.outcome(
                trigger,
                ReloadResult::Refused,
                hash,
                format!(
                    "changing {} needs a restart; nothing was applied",
                    fields.join(", ")
                ),
            );
            outcome.steps = steps;
            return outcome;
        }
        if plan.is_empty() {
            return self.outcome(
                trigger,
                ReloadResult::Unchanged,
                hash,
                "nothing to change".into(),
            );
        }
        match live.apply(&new, &plan) {
            Ok(()) => {
                let generation = {
                    let mut state = self.lock_state();
                    state.applied = Applied {
                        generation: state.applied.generation + 1,
                        hash: hash.clone(),
                        at_unix_s: unix_now(),
                    };
                    state.applied.generation
                };
                let mut outcome = self.outcome(
                    trigger,
                    ReloadResult::Applied,
                    hash,
                    format!(
                        "applied {} change(s); generation {generation}",
                        plan.steps.len()
                    ),
                );
                outcome.steps = steps;
                outcome.warnings = plan.warnings;
                outcome
            }
            Err(err) => {
                let mut outcome = self.outcome(
                    trigger,
                    ReloadResult::Failed,
                    hash,
                    format!("{err:#}; rolled back, the previous configuration still serves"),
                );
                outcome.steps = steps;
                outcome
            }
        }
    }

    /// The plan from what serves to a declaration a client sent as text, without applying
    /// it. `label` names the text in diagnostics (the client's file name); no file is opened,
    /// not even the backing files the text names (see [`Environment::for_client_text`]).
    pub fn plan_text(&self, label: &str, text: String) -> Result<TextPlan, String> {
        let env = Environment::for_client_text();
        let (config, report) = config::check_text(label, text, Purpose::Run, &env);
        let Some(new) = config else {
            return Err(report.render());
        };
        let has_files = new
            .subsystem
            .iter()
            .flat_map(|s| &s.namespace)
            .any(|ns| matches!(ns.backend(), Some(config::BackendRef::File { .. })));
        let notes = if has_files {
            vec![
                "backing files of file namespaces are not probed by plan (the target opens no path a client names); reload checks them"
                    .to_string(),
            ]
        } else {
            Vec::new()
        };
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(TextPlan {
            plan: plan(&live.config, &new),
            diagnostics: (!report.diagnostics.is_empty()).then(|| report.render()),
            notes,
        })
    }

    fn outcome(
        &self,
        trigger: Trigger,
        result: ReloadResult,
        hash: String,
        message: String,
    ) -> Outcome {
        Outcome {
            result,
            trigger,
            generation: self.lock_state().applied.generation,
            hash,
            at_unix_s: unix_now(),
            message,
            steps: Vec::new(),
            warnings: Vec::new(),
            diagnostics: None,
            duration_ms: 0.0,
        }
    }

    /// Logs the attempt as one line (trigger, result, generation, duration, steps, message),
    /// its diagnostics and warnings each on a line of their own after it, and keeps it for
    /// `status`.
    fn record(&self, mut outcome: Outcome, started: Instant) -> Outcome {
        outcome.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let line = reload_line(&outcome);
        if matches!(
            outcome.result,
            ReloadResult::Applied | ReloadResult::Unchanged
        ) {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        for diagnostic in outcome.diagnostics.iter().flat_map(|d| d.lines()) {
            warn!("reload diagnostic: {diagnostic}");
        }
        for w in &outcome.warnings {
            warn!("reload warning: {w}");
        }
        self.lock_state().last_attempt = Some(outcome.clone());
        outcome
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The applied generation and the last attempt, for `status`.
    pub fn status(&self) -> Value {
        let state = self.lock_state();
        json!({
            "path": self.path.display().to_string(),
            "applied": state.applied,
            "last_attempt": state.last_attempt,
        })
    }

    /// The declaration serving now.
    pub fn with_live<T>(&self, f: impl FnOnce(&Live) -> T) -> T {
        f(&self.live.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// FNV-1a over the bytes, as hex: cheap, stable, enough to tell edits apart.
fn hash_bytes(bytes: &[u8]) -> String {
    let mut hasher = Fnv1a::default();
    hasher.write(bytes);
    format!("{:016x}", hasher.finish())
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `1 error`, `2 errors`.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// The one line a reload logs: `reload by file: applied, generation 4, 1.8 ms, 2 steps
/// (add namespace ...; remove listener ...): message`.
fn reload_line(outcome: &Outcome) -> String {
    let trigger = match outcome.trigger {
        Trigger::File => "file change",
        Trigger::Signal => "SIGHUP",
        Trigger::Rpc => "control socket",
    };
    let result = serde_json::to_value(outcome.result)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let steps = if outcome.steps.is_empty() {
        "no steps".to_owned()
    } else {
        format!(
            "{} ({})",
            count(outcome.steps.len(), "step"),
            outcome.steps.join("; ")
        )
    };
    format!(
        "reload by {trigger}: {result}, generation {}, {:.1} ms, {steps}: {}",
        outcome.generation, outcome.duration_ms, outcome.message
    )
}
