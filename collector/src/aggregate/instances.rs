//! Instances: what each sender's refs stand for, its last merged sequence
//! (the exactly-once rule) and its gauges; binding a batch's definitions
//! within the instance's limits.

use super::admission::Limits;
use crate::rejection::{Refused, Rejection};
use crate::validate::Definition;
use shoal_core::SeriesKey;
use std::collections::HashMap;
use std::sync::Arc;

/// What an instance's ref stands for.
#[derive(Clone, Debug)]
pub(crate) enum RefEntry {
    /// A series.
    Series(Arc<SeriesKey>),
    /// A definition refused for good (invalid, or past the instance's series
    /// limit): its updates are rejected, not answered as unknown (which would
    /// make the SDK resend definitions forever).
    Refused(Rejection),
}

/// One sender.
pub(crate) struct Instance {
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) last_sequence: u64,
    pub(crate) refs: HashMap<u32, RefEntry>,
    /// `Series` entries of `refs`.
    pub(crate) accepted: usize,
    pub(crate) gauges: HashMap<Arc<SeriesKey>, f64>,
    pub(crate) last_seen_secs: u64,
    /// When this process first saw it (not persisted: a restart starts the
    /// batch rate over).
    pub(crate) first_seen_secs: u64,
    /// Batches merged since `first_seen_secs`.
    pub(crate) batches: u64,
    /// Durable mode: the WAL ticket of its last merged batch (not
    /// persisted: everything restored is durable, ticket 0).
    pub(crate) ticket: u64,
}

impl Instance {
    pub(crate) fn new(now: u64) -> Instance {
        Instance {
            labels: Vec::new(),
            last_sequence: 0,
            refs: HashMap::new(),
            accepted: 0,
            gauges: HashMap::new(),
            last_seen_secs: now,
            first_seen_secs: now,
            batches: 0,
            ticket: 0,
        }
    }
}

/// The definitions of one batch, bound against what the instance already
/// has; applied to the instance only by [`Binding::commit`].
pub(crate) struct Binding<'a> {
    known: Option<&'a Instance>,
    limits: Limits,
    accepted: usize,
    refused: usize,
    defined: HashMap<u32, RefEntry>,
    /// Why this batch's refused definitions were refused, in detail.
    refusals: HashMap<u32, Refused>,
}

impl<'a> Binding<'a> {
    pub(crate) fn new(known: Option<&'a Instance>, limits: &Limits) -> Binding<'a> {
        let (accepted, refused) = known.map_or((0, 0), |i| (i.accepted, i.refs.len() - i.accepted));
        Binding { known, limits: *limits, accepted, refused, defined: HashMap::new(), refusals: HashMap::new() }
    }

    /// Binds one definition. Series labels override instance labels of the
    /// same key. Refuses the whole batch only when the instance keeps
    /// defining refused series past [`Limits::refused_refs`].
    pub(crate) fn bind(&mut self, d: Definition, instance_labels: &[(String, String)]) -> Result<(), Refused> {
        let r = d.r#ref;
        let key = |(name, labels): (String, Vec<(String, String)>)| {
            let mut all = instance_labels.to_vec();
            all.extend(labels);
            Arc::new(SeriesKey::new(name, all))
        };
        let entry = match (self.known.and_then(|i| i.refs.get(&r)), d.series) {
            // A ref bound before stays counted as it was.
            (Some(RefEntry::Series(_)), Ok(series)) => RefEntry::Series(key(series)),
            (Some(RefEntry::Series(_)), Err(refused)) => self.refuse(r, refused),
            // A refused ref defined again is judged again: a durable
            // forwarder that restarts keeps its instance id but numbers its
            // refs anew, so the ref may now name a valid series.
            (Some(RefEntry::Refused(_)), Err(refused)) => self.refuse(r, refused),
            (Some(RefEntry::Refused(_)), Ok(series)) if self.accepted < self.limits.per_instance => {
                self.accepted += 1;
                RefEntry::Series(key(series))
            }
            (Some(RefEntry::Refused(_)), Ok((name, _))) => {
                let message = format!("ref {r}: series {name:?} is past the instance's limit of {} series", self.limits.per_instance);
                self.refuse(r, Refused::new(Rejection::SeriesLimitInstance, message))
            }
            (None, Err(refused)) => {
                self.count_refused()?;
                self.refuse(r, refused)
            }
            (None, Ok(series)) if self.accepted < self.limits.per_instance => {
                self.accepted += 1;
                RefEntry::Series(key(series))
            }
            (None, Ok((name, _))) => {
                self.count_refused()?;
                let message = format!("ref {r}: series {name:?} is past the instance's limit of {} series", self.limits.per_instance);
                self.refuse(r, Refused::new(Rejection::SeriesLimitInstance, message))
            }
        };
        self.defined.insert(r, entry);
        Ok(())
    }

    fn count_refused(&mut self) -> Result<(), Refused> {
        self.refused += 1;
        if self.refused > self.limits.refused_refs() {
            return Err(Refused::new(
                Rejection::InstanceLimit,
                format!("instance keeps defining refused series past {}: batch refused", self.limits.refused_refs()),
            ));
        }
        Ok(())
    }

    fn refuse(&mut self, r: u32, refused: Refused) -> RefEntry {
        let entry = RefEntry::Refused(refused.reason);
        self.refusals.insert(r, refused);
        entry
    }

    /// What `r` stands for: bound by this batch, or before.
    pub(crate) fn resolve(&self, r: u32) -> Option<RefEntry> {
        self.defined.get(&r).or_else(|| self.known.and_then(|k| k.refs.get(&r))).cloned()
    }

    /// Why updates of the refused ref `r` are rejected: the detail if this
    /// batch refused its definition, else the reason it was refused with.
    pub(crate) fn refusal(&self, r: u32, reason: Rejection) -> Refused {
        self.refusals
            .get(&r)
            .cloned()
            .unwrap_or_else(|| Refused::new(reason, format!("ref {r}: series refused when it was defined ({})", reason.as_str())))
    }

    /// The refused definitions of this batch.
    pub(crate) fn take_refusals(&mut self) -> Vec<(u32, Refused)> {
        let mut out: Vec<(u32, Refused)> = self.refusals.drain().collect();
        out.sort_by_key(|(r, _)| *r);
        out
    }

    /// The binding, without its borrow of the instance, ready to commit.
    pub(crate) fn finish(self) -> Bound {
        Bound { defined: self.defined, accepted: self.accepted }
    }
}

/// A batch's definitions, bound and ready to be committed.
pub(crate) struct Bound {
    defined: HashMap<u32, RefEntry>,
    accepted: usize,
}

impl Bound {
    /// Applies the binding and the batch's sequence to the instance.
    pub(crate) fn commit(self, instance: &mut Instance, sequence: u64, now: u64, labels: Vec<(String, String)>) {
        instance.last_sequence = sequence;
        instance.last_seen_secs = now;
        instance.batches += 1;
        instance.labels = labels;
        instance.refs.extend(self.defined);
        instance.accepted = self.accepted;
    }
}
