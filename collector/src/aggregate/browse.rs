//! What the live page and the JSON API read: the instances that report (and
//! those gone silent), one page of the series matching a search, and the
//! points of some series. Everything here is a read under the aggregator's
//! lock, so each costs at most one pass over the series (no index to keep
//! in step with the merge).

use super::{Aggregator, SeriesPoints};
use crate::aggregate::rollup::Point;
use shoal_core::{Kind, SeriesKey};
use std::sync::Arc;

/// One sender as the overview shows it.
#[derive(Clone, Debug)]
pub struct InstanceView {
    /// The SDK's instance id.
    pub id: String,
    /// Its instance labels (`service`, `instance`, ...).
    pub labels: Vec<(String, String)>,
    /// Unix seconds of its last merged batch.
    pub last_seen_secs: u64,
    /// Unix seconds this process first saw it.
    pub first_seen_secs: u64,
    /// Batches merged since `first_seen_secs`.
    pub batches: u64,
    /// Series it has defined and that were accepted.
    pub series: usize,
    /// No batch for more than an interval and a half: it stopped
    /// reporting, or cannot reach us.
    pub silent: bool,
}

impl InstanceView {
    /// Its `service` label, if it sent one.
    pub fn service(&self) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str())
    }

    /// Average batches per second since first seen (0 before a second has
    /// passed).
    pub fn batches_per_sec(&self) -> f64 {
        let span = self.last_seen_secs.saturating_sub(self.first_seen_secs);
        if span == 0 {
            0.0
        } else {
            self.batches.saturating_sub(1) as f64 / span as f64
        }
    }
}

/// One page of a series search.
#[derive(Clone, Debug)]
pub struct SeriesPage {
    /// Series that matched, all pages together.
    pub total: usize,
    /// This page, sorted by canonical key.
    pub series: Vec<(Arc<SeriesKey>, Kind)>,
}

/// Which series a search keeps.
#[derive(Clone, Debug, Default)]
pub struct SeriesFilter<'a> {
    /// Exact metric name.
    pub name: Option<&'a str>,
    /// Substring of the canonical key (`name{k="v",...}`).
    pub contains: Option<&'a str>,
    /// Every one of these labels, exactly.
    pub labels: &'a [(String, String)],
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Exactly this series (its canonical key).
    pub series: Option<&'a str>,
}

impl SeriesFilter<'_> {
    fn keeps(&self, key: &SeriesKey, kind: Kind) -> bool {
        self.name.is_none_or(|n| key.name() == n)
            && self.kind.is_none_or(|k| k == kind)
            && self.labels.iter().all(|l| key.labels().contains(l))
            && self.series.is_none_or(|c| key.canonical() == c)
            && self.contains.is_none_or(|c| key.canonical().contains(c))
    }
}

impl Aggregator {
    /// Every instance this collector holds (it forgets them after
    /// `instance_expiry_secs`), sorted by service then id.
    pub fn instances_overview(&self, now: u64) -> Vec<InstanceView> {
        // Half an interval of slack past one interval (and at least a second
        // of clock rounding): an SDK flushing every interval, a little late,
        // is not flagged; one that stopped is, within two intervals.
        let interval = self.config.interval_secs;
        let silent_after = interval + (interval / 2).max(1);
        let mut out: Vec<InstanceView> = self
            .instances
            .iter()
            .map(|(id, i)| InstanceView {
                id: id.clone(),
                labels: i.labels.clone(),
                last_seen_secs: i.last_seen_secs,
                first_seen_secs: i.first_seen_secs,
                batches: i.batches,
                series: i.accepted,
                silent: now.saturating_sub(i.last_seen_secs) > silent_after,
            })
            .collect();
        out.sort_by(|a, b| (a.service(), &a.id).cmp(&(b.service(), &b.id)));
        out
    }

    /// The series matching `filter`, sorted by canonical key, from `offset`,
    /// at most `limit` of them. One pass, then a sort of the matches only.
    pub fn series_page(&self, filter: &SeriesFilter, offset: usize, limit: usize) -> SeriesPage {
        let mut matched: Vec<(&Arc<SeriesKey>, Kind)> =
            self.series.values().filter(|s| filter.keeps(&s.key, s.kind)).map(|s| (&s.key, s.kind)).collect();
        let total = matched.len();
        let end = offset.saturating_add(limit).min(total);
        if offset >= total || limit == 0 {
            return SeriesPage { total, series: Vec::new() };
        }
        // Only the page has to be in order: select it, then sort it.
        let by_key = |a: &(&Arc<SeriesKey>, Kind), b: &(&Arc<SeriesKey>, Kind)| a.0.canonical().cmp(b.0.canonical());
        if end < total {
            matched.select_nth_unstable_by(end, by_key);
            matched.truncate(end);
        }
        if offset > 0 {
            matched.select_nth_unstable_by(offset, by_key);
        }
        let mut page: Vec<_> = matched.split_off(offset);
        page.sort_unstable_by(by_key);
        SeriesPage { total, series: page.into_iter().map(|(k, kind)| (k.clone(), kind)).collect() }
    }

    /// Points of the series matching `filter`, sorted by key, only those of
    /// intervals within `intervals` (indices, inclusive); a gauge also gets
    /// its live value as the point of the interval now open. At most
    /// `limit` series.
    pub fn points_matching(
        &self,
        filter: &SeriesFilter,
        intervals: std::ops::RangeInclusive<u64>,
        now: u64,
        limit: usize,
    ) -> (usize, Vec<SeriesPoints>) {
        let page = self.series_page(filter, 0, limit);
        let open = now / self.config.interval_secs;
        let live = if page.series.iter().any(|(_, k)| *k == Kind::Gauge) { Some(self.gauge_values(now)) } else { None };
        let out = page
            .series
            .into_iter()
            .filter_map(|(key, kind)| {
                let s = self.series.get(&key)?;
                let mut points: Vec<(u64, Point)> = s.points.iter().filter(|(i, _)| intervals.contains(i)).cloned().collect();
                if let Some(values) = live.as_ref().and_then(|l| l.get(&key)).filter(|_| intervals.contains(&open)) {
                    let value = self.config.gauge_rule(key.name()).apply(values);
                    match points.last_mut() {
                        Some((i, p)) if *i == open => *p = Point::Gauge(value),
                        _ => points.push((open, Point::Gauge(value))),
                    }
                }
                Some((key, kind, points))
            })
            .collect();
        (page.total, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::stats::Stats;

    fn with_series(n: usize) -> Aggregator {
        let config = Config::default();
        config.validate().unwrap();
        let mut a = Aggregator::new(config, Arc::new(Stats::default()));
        for i in 0..n {
            let key = Arc::new(SeriesKey::new(format!("m{}", i % 3), vec![("i".to_string(), format!("{i:03}"))]));
            super::super::rollup::series_entry(&mut a.series, key, Kind::Counter, 0);
        }
        a
    }

    #[test]
    fn pages_are_sorted_disjoint_and_cover_every_match() {
        let a = with_series(50);
        let all = SeriesFilter::default();
        let mut seen = Vec::new();
        for offset in (0..60).step_by(7) {
            let page = a.series_page(&all, offset, 7);
            assert_eq!(page.total, 50);
            seen.extend(page.series.iter().map(|(k, _)| k.canonical().to_string()));
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted, "pages in order, no repeats");
        assert_eq!(seen.len(), 50);
    }

    #[test]
    fn a_search_keeps_only_matches() {
        let a = with_series(30);
        let labels = [("i".to_string(), "004".to_string())];
        let by_label = SeriesFilter { labels: &labels, ..Default::default() };
        let page = a.series_page(&by_label, 0, 10);
        assert_eq!(page.total, 1);
        assert_eq!(page.series[0].0.canonical(), r#"m1{i="004"}"#);
        let by_text = SeriesFilter { contains: Some("m2{"), ..Default::default() };
        assert_eq!(a.series_page(&by_text, 0, 100).total, 10);
        let by_kind = SeriesFilter { kind: Some(Kind::Gauge), ..Default::default() };
        assert_eq!(a.series_page(&by_kind, 0, 100).total, 0);
    }
}
