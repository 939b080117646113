//! Values made from files that an operator replaces while the service runs (certificates,
//! keys, a JWKS), read again when the files change.
//!
//! The files are polled: a Kubernetes Secret or ConfigMap is updated by swapping a symbolic
//! link to a new directory, which file-change notifications on the file itself do not see, and
//! polling a few small files is cheap. A change that does not build (a key that does not match
//! its certificate, a file caught half-written) keeps the value in force, is logged, and is
//! tried again at the next poll.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use anyhow::Context as _;

/// Builds a value from the contents of its files, in the order they were named.
type Build<T> = dyn Fn(&[Vec<u8>]) -> anyhow::Result<T> + Send + Sync;

/// A value built from files, rebuilt when their contents change. Cloning shares it.
pub struct Reloading<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Box<Build<T>>,
    state: RwLock<State<T>>,
}

struct State<T> {
    current: Arc<T>,
    contents: Vec<Vec<u8>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.shared.what)
            .field("paths", &self.shared.paths)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads `paths` and builds the value from them: an error names the file or says why the
    /// value does not build. When `every` is given (inside a Tokio runtime), the files are read
    /// again at that interval for as long as the value is in use, and their reloads are listed
    /// at zero from now on (`what` names them).
    pub fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        every: Option<Duration>,
        build: impl Fn(&[Vec<u8>]) -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let contents = read_all(&paths)?;
        let current = build(&contents).with_context(|| format!("invalid {what}"))?;
        let shared = Arc::new(Shared {
            what,
            paths,
            build: Box::new(build),
            state: RwLock::new(State {
                current: Arc::new(current),
                contents,
            }),
        });
        if let Some(every) = every {
            crate::metrics::register_reloads(what);
            tokio::spawn(poll(Arc::downgrade(&shared), every));
        }
        Ok(Self { shared })
    }

    /// A value that never changes.
    pub fn fixed(what: &'static str, value: T) -> Self {
        Self {
            shared: Arc::new(Shared {
                what,
                paths: Vec::new(),
                build: Box::new(|_| anyhow::bail!("a fixed value is not rebuilt")),
                state: RwLock::new(State {
                    current: Arc::new(value),
                    contents: Vec::new(),
                }),
            }),
        }
    }

    /// The value now in force.
    pub fn current(&self) -> Arc<T> {
        match self.shared.state.read() {
            Ok(state) => state.current.clone(),
            Err(poisoned) => poisoned.into_inner().current.clone(),
        }
    }

    /// Reads the files and, if they changed and build, puts the new value in force. Returns
    /// whether it did.
    pub fn reload(&self) -> anyhow::Result<bool> {
        self.shared.reload()
    }
}

impl<T> Shared<T> {
    fn reload(&self) -> anyhow::Result<bool> {
        let contents = read_all(&self.paths)?;
        let unchanged = match self.state.read() {
            Ok(state) => state.contents == contents,
            Err(poisoned) => poisoned.into_inner().contents == contents,
        };
        if unchanged {
            return Ok(false);
        }
        let value = (self.build)(&contents).with_context(|| format!("invalid {}", self.what))?;
        let mut state = match self.state.write() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        *state = State {
            current: Arc::new(value),
            contents,
        };
        Ok(true)
    }
}

/// Reads the files of `shared` every `every` until the value is no longer used.
async fn poll<T>(shared: Weak<Shared<T>>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // File reads are small but blocking; a reload is rare, so the poll stays on this task.
        match shared.reload() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(what = shared.what, "reloaded");
                metrics::counter!(crate::metrics::RELOADS, "what" => shared.what, "result" => "ok")
                    .increment(1);
            }
            Err(error) => {
                tracing::warn!(
                    what = shared.what,
                    error = format!("{error:#}"),
                    "reload failed; the value in force stays"
                );
                metrics::counter!(crate::metrics::RELOADS, "what" => shared.what, "result" => "error")
                    .increment(1);
            }
        }
    }
}

fn read_all(paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    paths.iter().map(|path| read(path)).collect()
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(contents: &[Vec<u8>]) -> anyhow::Result<u32> {
        let text = std::str::from_utf8(&contents[0])?;
        Ok(text.trim().parse()?)
    }

    #[test]
    fn a_change_that_builds_replaces_the_value_and_one_that_does_not_keeps_it() {
        let dir = std::env::temp_dir().join(format!("reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("value");
        std::fs::write(&path, "1").expect("write");
        let value = Reloading::load("a number", vec![path.clone()], None, parse).expect("loads");
        assert_eq!(*value.current(), 1);

        assert!(!value.reload().expect("unchanged"));
        std::fs::write(&path, "2").expect("write");
        assert!(value.reload().expect("reloaded"));
        assert_eq!(*value.current(), 2);

        std::fs::write(&path, "not a number").expect("write");
        let refused = value.reload().expect_err("does not build");
        assert!(format!("{refused:#}").contains("invalid a number"));
        assert_eq!(*value.current(), 2);

        std::fs::remove_file(&path).expect("remove");
        assert!(value.reload().is_err());
        assert_eq!(*value.current(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
