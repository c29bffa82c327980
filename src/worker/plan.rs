//! How many shards a worker should hold, and which to give up or claim:
//! a pure function of what the last heartbeat saw, so every worker reaches
//! the same split from the same membership.

use std::collections::BTreeSet;
use uuid::Uuid;

/// This worker's share: ⌊S/N⌋, or ⌈S/N⌉ for the first S mod N workers in
/// rank order; 0 for a worker that is not (yet) a member, and for workers
/// beyond S (standbys).
pub fn quota(shards: u16, members: &[Uuid], me: Uuid) -> usize {
    let Some(rank) = members.iter().position(|m| *m == me) else {
        return 0;
    };
    let (shards, n) = (usize::from(shards), members.len());
    shards / n + usize::from(rank < shards % n)
}

/// What to change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Held shards to give up, highest first.
    pub release: Vec<u16>,
    /// Free shards to try to claim, in order of preference.
    pub claim: Vec<u16>,
}

/// The moves from `held` (including shards still winding down) towards
/// `quota`. Free shards are preferred in a rank-dependent order — first
/// those with `shard mod N == rank` — so that workers starting together
/// claim disjoint shards instead of racing for the same ones.
pub fn moves(
    quota: usize,
    held: &BTreeSet<u16>,
    free: &[u16],
    rank: Option<usize>,
    members: usize,
) -> Moves {
    if held.len() > quota {
        return Moves {
            release: held
                .iter()
                .rev()
                .take(held.len() - quota)
                .copied()
                .collect(),
            claim: Vec::new(),
        };
    }
    let mut claim: Vec<u16> = free.iter().filter(|s| !held.contains(s)).copied().collect();
    if let Some(rank) = rank {
        let n = members.max(1);
        claim.sort_by_key(|s| (usize::from(*s) % n != rank, *s));
    }
    claim.truncate(quota - held.len());
    Moves {
        release: Vec::new(),
        claim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Uuid> {
        let mut m: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        m.sort();
        m
    }

    #[test]
    fn quotas_split_every_shard_evenly() {
        for shards in 1..=17u16 {
            for n in 1..=20 {
                let m = members(n);
                let quotas: Vec<usize> = m.iter().map(|w| quota(shards, &m, *w)).collect();
                assert_eq!(quotas.iter().sum::<usize>(), usize::from(shards));
                let (low, high) = (usize::from(shards) / n, usize::from(shards).div_ceil(n));
                assert!(quotas.iter().all(|q| *q == low || *q == high), "{quotas:?}");
            }
        }
    }

    #[test]
    fn a_worker_that_is_not_a_member_holds_nothing() {
        assert_eq!(quota(8, &members(2), Uuid::now_v7()), 0);
    }

    #[test]
    fn workers_beyond_the_shard_count_are_standbys() {
        let m = members(5);
        let quotas: Vec<usize> = m.iter().map(|w| quota(3, &m, *w)).collect();
        assert_eq!(quotas, vec![1, 1, 1, 0, 0]);
    }

    #[test]
    fn workers_starting_together_prefer_disjoint_shards() {
        let free: Vec<u16> = (0..8).collect();
        let none = BTreeSet::new();
        let claims: Vec<Vec<u16>> = [3, 3, 2]
            .iter()
            .enumerate()
            .map(|(rank, q)| moves(*q, &none, &free, Some(rank), 3).claim)
            .collect();
        assert_eq!(claims, vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]);
    }

    #[test]
    fn a_worker_over_its_quota_releases_the_excess_and_claims_nothing() {
        let held: BTreeSet<u16> = [1, 4, 6, 7].into();
        let m = moves(2, &held, &[0, 2], Some(0), 4);
        assert_eq!(m.release, vec![7, 6]);
        assert!(m.claim.is_empty());
    }

    #[test]
    fn a_worker_under_its_quota_claims_only_what_it_lacks() {
        let held: BTreeSet<u16> = [2].into();
        let m = moves(3, &held, &[0, 2, 5, 6, 7], Some(1), 3);
        assert!(m.release.is_empty());
        assert_eq!(m.claim, vec![7, 0]);
    }
}
