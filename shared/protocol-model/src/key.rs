//! Idempotency keys and request fingerprints, interned: the state holds a small number per
//! distinct string, so copying and hashing states does not copy or hash strings. The strings
//! themselves come from the `protocol` functions that name keys.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(u32);

#[derive(Default)]
struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

fn interner() -> &'static RwLock<Interner> {
    static INTERNER: OnceLock<RwLock<Interner>> = OnceLock::new();
    INTERNER.get_or_init(RwLock::default)
}

impl Key {
    pub fn new(name: &str) -> Self {
        let known = interner()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .get(name)
            .copied();
        if let Some(id) = known {
            return Self(id);
        }
        let mut interner = interner().write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = interner.ids.get(name) {
            return Self(id);
        }
        let id = u32::try_from(interner.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = name.into();
        interner.names.push(Arc::clone(&name));
        interner.ids.insert(name, id);
        Self(id)
    }

    pub fn name(self) -> Arc<str> {
        let interner = interner().read().unwrap_or_else(PoisonError::into_inner);
        usize::try_from(self.0)
            .ok()
            .and_then(|at| interner.names.get(at))
            .cloned()
            .unwrap_or_else(|| "?".into())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}
