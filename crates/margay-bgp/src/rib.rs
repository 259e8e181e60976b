//! Routing tables: Adj-RIB-In, Loc-RIB with best-path selection, and
//! Adj-RIB-Out per peer (RFC 4271 §9, route reflection per RFC 4456,
//! graceful-restart stale routes per RFC 4724).
//!
//! Mutations only mark prefixes dirty; [`Rib::flush`] selects best paths for
//! them and returns the kernel and per-peer deltas, so a burst of UPDATEs
//! costs one selection per prefix.

use std::collections::{HashMap as StdHashMap, HashSet as StdHashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::codec::{
    encode_attributes, prefix_len_on_wire, AddressFamily, AsPath, Context, MpReach, MpUnreach,
    Origin, PathAttributes, Update, HEADER_LEN,
};
use crate::fsm::Negotiated;

/// The Fx hash (as in rustc): several times faster than SipHash on the
/// small keys here. Not DoS-resistant, which is acceptable as only
/// configured peers feed the tables.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // Fx alone leaves the low bits (the bucket index) depending only on
        // the low bits of the input, and prefixes differ in their high
        // bits: finish with murmur3's mixer so every bit counts.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<FxHasher>>;
type HashSet<K> = StdHashSet<K, BuildHasherDefault<FxHasher>>;

/// LOCAL_PREF for routes that carry none.
const DEFAULT_LOCAL_PREF: u32 = 100;
const PARTIAL: u8 = 0x20;
/// UPDATE fixed part: header, withdrawn length, attributes length.
const UPDATE_FIXED: usize = HEADER_LEN + 4;
/// MP attribute header (extended length assumed) plus AFI, SAFI.
const MP_FIXED: usize = 4 + 3;

/// The speaker's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Set to act as a route reflector with this cluster id.
    pub cluster_id: Option<Ipv4Addr>,
}

/// A configured peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub remote_as: u32,
    /// A route-reflector client (meaningful with a cluster id).
    pub rr_client: bool,
    /// Advertise ourselves as next hop to this iBGP peer for learned routes
    /// too (our own routes and eBGP sessions always get next-hop-self).
    pub next_hop_self: bool,
    /// Our addresses for next-hop-self; a family without one is not
    /// advertised when it needs it.
    pub local_v4: Option<Ipv4Addr>,
    pub local_v6: Option<Ipv6Addr>,
}

/// A Loc-RIB change for the kernel. Routes we originate are not installed:
/// the agent programs those itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChange {
    Install(IpNet, IpAddr),
    Remove(IpNet),
}

/// What [`Rib::flush`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub kernel: Vec<KernelChange>,
    /// UPDATEs to send, per peer, each within 4096 bytes for that session.
    pub updates: Vec<(IpAddr, Vec<Update>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum NextHop {
    /// Locally originated: next hop is us.
    Local,
    V4(Ipv4Addr),
    V6(Ipv6Addr, Option<Ipv6Addr>),
}

/// Attributes shared (interned) by every prefix that has them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteAttrs {
    /// Without NEXT_HOP: that lives in `nh`, for both families.
    pa: PathAttributes,
    nh: NextHop,
}

/// Index into `Rib::peers`, or `LOCAL`.
type Src = u32;
const LOCAL: Src = Src::MAX;

#[derive(Debug, Clone)]
struct Path {
    src: Src,
    attrs: Arc<RouteAttrs>,
    stale: bool,
}

/// One prefix's candidates. Kept small, as a full table has one per prefix: the single
/// path most prefixes have is stored inline, and the selected path is split so that its
/// source and the dirty flag share a word.
#[derive(Debug, Default)]
struct Dest {
    paths: Paths,
    /// Source of the path selected at the last flush (meaningless without `best_attrs`).
    best_src: Src,
    dirty: bool,
    best_attrs: Option<Arc<RouteAttrs>>,
}

impl Dest {
    /// Selected at the last flush.
    fn best(&self) -> Option<(Src, Arc<RouteAttrs>)> {
        self.best_attrs.clone().map(|a| (self.best_src, a))
    }

    fn set_best(&mut self, best: Option<(Src, Arc<RouteAttrs>)>) {
        match best {
            Some((src, attrs)) => {
                self.best_src = src;
                self.best_attrs = Some(attrs);
            }
            None => self.best_attrs = None,
        }
    }
}

/// A vector of paths that holds one without allocating, in the space of one (the vector
/// behind a box keeps it that small).
#[derive(Debug, Default)]
enum Paths {
    #[default]
    None,
    One(Path),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Path>>),
}

impl Paths {
    fn as_slice(&self) -> &[Path] {
        match self {
            Paths::None => &[],
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Path] {
        match self {
            Paths::None => &mut [],
            Paths::One(p) => std::slice::from_mut(p),
            Paths::Many(v) => v,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, path: Path) {
        *self = match std::mem::take(self) {
            Paths::None => Paths::One(path),
            Paths::One(p) => Paths::Many(Box::new(vec![p, path])),
            Paths::Many(mut v) => {
                v.push(path);
                Paths::Many(v)
            }
        };
    }

    fn retain(&mut self, keep: impl FnMut(&Path) -> bool) {
        match self {
            Paths::None => {}
            Paths::One(p) => {
                let mut keep = keep;
                if !keep(p) {
                    *self = Paths::None;
                }
            }
            Paths::Many(v) => {
                v.retain(keep);
                match v.len() {
                    0 => *self = Paths::None,
                    1 => *self = Paths::One(v.remove(0)),
                    _ => {}
                }
            }
        }
    }
}

/// The Loc-RIB, one table per family: an IPv4 key is 5 bytes where an `IpNet` is 18, and
/// a full IPv4 table is the common case. The IPv4 table is split in shards by hash: a
/// growing table reallocates one small shard at a time, where one big table would hold its
/// old and new arrays at once (half as much memory again, at 100,000 prefixes).
#[derive(Debug)]
struct Loc {
    v4: Vec<HashMap<ipnet::Ipv4Net, Dest>>,
    v6: HashMap<ipnet::Ipv6Net, Dest>,
}

const V4_SHARDS: usize = 64;

impl Default for Loc {
    fn default() -> Self {
        Loc {
            v4: (0..V4_SHARDS).map(|_| HashMap::default()).collect(),
            v6: HashMap::default(),
        }
    }
}

impl Loc {
    fn shard(&mut self, n: &ipnet::Ipv4Net) -> &mut HashMap<ipnet::Ipv4Net, Dest> {
        let mut h = FxHasher::default();
        n.hash(&mut h);
        // The top bits: the maps themselves index by the low ones.
        let i = (h.finish() >> 58) as usize % V4_SHARDS;
        &mut self.v4[i]
    }

    fn get_mut(&mut self, prefix: &IpNet) -> Option<&mut Dest> {
        match prefix {
            IpNet::V4(n) => self.shard(n).get_mut(n),
            IpNet::V6(n) => self.v6.get_mut(n),
        }
    }

    fn get_or_default(&mut self, prefix: IpNet) -> &mut Dest {
        match prefix {
            IpNet::V4(n) => self.shard(&n).entry(n).or_default(),
            IpNet::V6(n) => self.v6.entry(n).or_default(),
        }
    }

    fn remove(&mut self, prefix: &IpNet) {
        match prefix {
            IpNet::V4(n) => self.shard(n).remove(n),
            IpNet::V6(n) => self.v6.remove(n),
        };
    }

    fn iter(&self) -> impl Iterator<Item = (IpNet, &Dest)> {
        let v4 = self.v4.iter().flatten().map(|(n, d)| (IpNet::V4(*n), d));
        v4.chain(self.v6.iter().map(|(n, d)| (IpNet::V6(*n), d)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (IpNet, &mut Dest)> {
        let v4 = self
            .v4
            .iter_mut()
            .flatten()
            .map(|(n, d)| (IpNet::V4(*n), d));
        v4.chain(self.v6.iter_mut().map(|(n, d)| (IpNet::V6(*n), d)))
    }
}

#[derive(Debug)]
struct Session {
    remote_id: Ipv4Addr,
    ctx: Context,
    families: Vec<AddressFamily>,
    /// Send the whole table and End-of-RIB at the next flush.
    full_dump: bool,
    adj_out: HashMap<IpNet, Arc<RouteAttrs>>,
}

#[derive(Debug)]
struct Peer {
    cfg: PeerConfig,
    ibgp: bool,
    /// Routes learned (the Adj-RIB-In itself lives in the Loc-RIB's
    /// candidate lists, tagged with the peer) per family.
    counts: [usize; 2],
    /// The remote id from the last session, kept while routes are stale.
    last_remote_id: Ipv4Addr,
    session: Option<Session>,
}

/// Adj-RIB-In, Loc-RIB and Adj-RIB-Out.
#[derive(Debug)]
pub struct Rib {
    cfg: RibConfig,
    peers: Vec<Option<Peer>>,
    by_addr: HashMap<IpAddr, Src>,
    loc: Loc,
    dirty: Vec<IpNet>,
    intern: HashSet<Arc<RouteAttrs>>,
    intern_swept_at: usize,
}

fn family(p: &IpNet) -> AddressFamily {
    match p {
        IpNet::V4(_) => AddressFamily::Ipv4Unicast,
        IpNet::V6(_) => AddressFamily::Ipv6Unicast,
    }
}

impl Rib {
    pub fn new(cfg: RibConfig) -> Self {
        Rib {
            cfg,
            peers: Vec::new(),
            by_addr: HashMap::default(),
            loc: Loc::default(),
            dirty: Vec::new(),
            intern: HashSet::default(),
            intern_swept_at: 0,
        }
    }

    /// Adds (or reconfigures, dropping its routes) a peer.
    pub fn add_peer(&mut self, cfg: PeerConfig) {
        self.remove_peer(cfg.address);
        let src = self
            .peers
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.peers.len());
        let peer = Peer {
            ibgp: cfg.remote_as == self.cfg.local_as,
            last_remote_id: Ipv4Addr::UNSPECIFIED,
            counts: [0; 2],
            session: None,
            cfg,
        };
        self.by_addr.insert(peer.cfg.address, src as Src);
        if src == self.peers.len() {
            self.peers.push(Some(peer));
        } else {
            self.peers[src] = Some(peer);
        }
    }

    /// Forgets a peer and withdraws its routes.
    pub fn remove_peer(&mut self, addr: IpAddr) {
        if let Some(src) = self.by_addr.remove(&addr) {
            self.drop_paths(src, |_| true);
            self.peers[src as usize] = None;
        }
    }

    /// The session to `addr` reached Established: its routes are accepted
    /// and it gets our table, then End-of-RIB.
    pub fn peer_up(&mut self, addr: IpAddr, negotiated: &Negotiated) {
        let Some(peer) = self.peer_mut(addr) else {
            return;
        };
        peer.last_remote_id = negotiated.remote_id;
        peer.session = Some(Session {
            remote_id: negotiated.remote_id,
            ctx: negotiated.context(),
            families: negotiated.families.clone(),
            full_dump: true,
            adj_out: HashMap::default(),
        });
    }

    /// The session left Established. With `retain_routes` (graceful
    /// restart) its routes stay, marked stale, until it sends End-of-RIB or
    /// [`Rib::restart_timer_expired`]; otherwise they go now.
    pub fn peer_down(&mut self, addr: IpAddr, retain_routes: bool) {
        let Some(&src) = self.by_addr.get(&addr) else {
            return;
        };
        if let Some(p) = self.peers[src as usize].as_mut() {
            p.session = None;
        }
        if retain_routes {
            for (_, dest) in self.loc.iter_mut() {
                for p in dest
                    .paths
                    .as_mut_slice()
                    .iter_mut()
                    .filter(|p| p.src == src)
                {
                    p.stale = true;
                }
            }
        } else {
            self.drop_paths(src, |_| true);
        }
    }

    /// The peer's restart time ran out before it came back with End-of-RIB.
    pub fn restart_timer_expired(&mut self, addr: IpAddr) {
        if let Some(&src) = self.by_addr.get(&addr) {
            self.drop_paths(src, |p| p.stale);
        }
    }

    /// The peer asked for a family again (route refresh).
    pub fn resend(&mut self, addr: IpAddr, family: AddressFamily) {
        if let Some(s) = self.peer_mut(addr).and_then(|p| p.session.as_mut()) {
            // Forgetting what it has makes the next flush send it all; other
            // families' entries are kept so they are not repeated.
            s.adj_out.retain(|n, _| self::family(n) != family);
            s.full_dump = true;
        }
    }

    /// Routes accepted from the peer for a family (for max-prefix).
    pub fn prefix_count(&self, addr: IpAddr, family: AddressFamily) -> usize {
        self.by_addr
            .get(&addr)
            .and_then(|&s| self.peers[s as usize].as_ref())
            .map_or(0, |p| p.counts[family as usize])
    }

    /// Prefixes currently advertised to the peer (its Adj-RIB-Out), all families.
    pub fn advertised_count(&self, addr: IpAddr) -> usize {
        self.by_addr
            .get(&addr)
            .and_then(|&s| self.peers[s as usize].as_ref())
            .and_then(|p| p.session.as_ref())
            .map_or(0, |s| s.adj_out.len())
    }

    /// Originates `prefix` (origin IGP, empty AS_PATH), e.g. an IPAM block.
    pub fn originate(&mut self, prefix: IpNet) {
        let attrs = self.intern(RouteAttrs {
            pa: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::default()),
                ..PathAttributes::default()
            },
            nh: NextHop::Local,
        });
        self.set_path(prefix.trunc(), LOCAL, attrs);
    }

    pub fn withdraw_local(&mut self, prefix: IpNet) {
        self.remove_path(prefix.trunc(), LOCAL);
    }

    /// Applies an UPDATE received from `addr` (ignored unless Established).
    pub fn apply_update(&mut self, addr: IpAddr, update: Update) {
        let Some(&src) = self.by_addr.get(&addr) else {
            return;
        };
        let Some(peer) = self.peers[src as usize]
            .as_ref()
            .filter(|p| p.session.is_some())
        else {
            return;
        };
        if let Some(f) = update.end_of_rib_family() {
            self.drop_paths(src, |p| p.stale && p.family == f);
            return;
        }
        let ibgp = peer.ibgp;
        let remote_as = peer.cfg.remote_as;
        for n in update.withdrawn {
            self.remove_path(IpNet::V4(n), src);
        }
        for n in update.mp_unreach.map(|u| u.withdrawn).unwrap_or_default() {
            self.remove_path(IpNet::V6(n), src);
        }
        let mut pa = update.attributes;
        let v4_nh = pa.next_hop.take();
        let accept = self.import(&mut pa, ibgp, remote_as);
        let v4 = update.nlri.into_iter().map(IpNet::V4);
        let (v6, v6_nh) = match update.mp_reach {
            Some(r) => (r.nlri, Some(NextHop::V6(r.next_hop, r.link_local))),
            None => (vec![], None),
        };
        let v6 = v6.into_iter().map(IpNet::V6);
        for (prefixes, nh) in [
            (v4.collect::<Vec<_>>(), v4_nh.map(NextHop::V4)),
            (v6.collect(), v6_nh),
        ] {
            match (accept, nh) {
                (true, Some(nh)) if !prefixes.is_empty() => {
                    let attrs = self.intern(RouteAttrs { pa: pa.clone(), nh });
                    for n in prefixes {
                        self.set_path(n, src, attrs.clone());
                    }
                }
                // Rejected (loop) routes replace what we had: withdraw.
                _ => {
                    for n in prefixes {
                        self.remove_path(n, src);
                    }
                }
            }
        }
    }

    /// Loop detection and per-session attribute rules on receipt; false to
    /// reject.
    fn import(&self, pa: &mut PathAttributes, ibgp: bool, remote_as: u32) -> bool {
        let path = pa.as_path.get_or_insert_with(AsPath::default);
        if ibgp {
            let own_originator = pa.originator_id == Some(self.cfg.router_id);
            let own_cluster = self
                .cfg
                .cluster_id
                .is_some_and(|c| pa.cluster_list.contains(&c));
            !own_originator && !own_cluster
        } else {
            // RFC 4271 §9.1.2 loop detection; RFC 4271 §6.3 first AS check.
            let ok = !path.contains(self.cfg.local_as) && path.first_as() == Some(remote_as);
            // iBGP-only attributes from an eBGP peer are discarded (RFC 7606 §7.5, RFC 4456 §8).
            pa.local_pref = None;
            pa.originator_id = None;
            pa.cluster_list.clear();
            ok
        }
    }

    fn peer_mut(&mut self, addr: IpAddr) -> Option<&mut Peer> {
        let src = *self.by_addr.get(&addr)?;
        self.peers[src as usize].as_mut()
    }

    fn intern(&mut self, attrs: RouteAttrs) -> Arc<RouteAttrs> {
        if let Some(a) = self.intern.get(&attrs) {
            return a.clone();
        }
        // Forget sets no route uses any more, amortised over growth.
        if self.intern.len() >= 2 * self.intern_swept_at + 1024 {
            self.intern.retain(|a| Arc::strong_count(a) > 1);
            self.intern_swept_at = self.intern.len();
        }
        let a = Arc::new(attrs);
        self.intern.insert(a.clone());
        a
    }

    fn mark(&mut self, prefix: IpNet) {
        if let Some(d) = self.loc.get_mut(&prefix) {
            if !d.dirty {
                d.dirty = true;
                self.dirty.push(prefix);
            }
        }
    }

    fn count(&mut self, src: Src, prefix: &IpNet, added: bool) {
        if let Some(p) = self.peers.get_mut(src as usize).and_then(Option::as_mut) {
            let c = &mut p.counts[family(prefix) as usize];
            *c = if added { *c + 1 } else { c.saturating_sub(1) };
        }
    }

    fn set_path(&mut self, prefix: IpNet, src: Src, attrs: Arc<RouteAttrs>) {
        let dest = self.loc.get_or_default(prefix);
        if !std::mem::replace(&mut dest.dirty, true) {
            self.dirty.push(prefix);
        }
        match dest.paths.as_mut_slice().iter_mut().find(|p| p.src == src) {
            Some(p) => {
                p.attrs = attrs;
                p.stale = false;
            }
            None => {
                dest.paths.push(Path {
                    src,
                    attrs,
                    stale: false,
                });
                self.count(src, &prefix, true);
            }
        }
    }

    fn remove_path(&mut self, prefix: IpNet, src: Src) {
        let Some(dest) = self.loc.get_mut(&prefix) else {
            return;
        };
        let before = dest.paths.len();
        dest.paths.retain(|p| p.src != src);
        if dest.paths.len() != before {
            if !std::mem::replace(&mut dest.dirty, true) {
                self.dirty.push(prefix);
            }
            self.count(src, &prefix, false);
        }
    }

    /// Removes the peer's paths matching `pred`.
    fn drop_paths(&mut self, src: Src, pred: impl Fn(&PathView) -> bool) {
        let mut removed = Vec::new();
        for (prefix, dest) in self.loc.iter_mut() {
            let fam = family(&prefix);
            let before = dest.paths.len();
            dest.paths.retain(|p| {
                p.src != src
                    || !pred(&PathView {
                        stale: p.stale,
                        family: fam,
                    })
            });
            if dest.paths.len() != before {
                removed.push(prefix);
            }
        }
        // Deterministic output order regardless of hashing.
        removed.sort_unstable();
        for prefix in removed {
            self.count(src, &prefix, false);
            self.mark(prefix);
        }
    }

    /// Selects best paths for changed prefixes and computes the deltas.
    pub fn flush(&mut self) -> Changes {
        let mut kernel = Vec::new();
        let mut out: Vec<Outgoing> = self.peers.iter().map(|_| Outgoing::default()).collect();
        let mut cache: Vec<ExportCache> = self.peers.iter().map(|_| HashMap::default()).collect();
        for prefix in std::mem::take(&mut self.dirty) {
            let Some(dest) = self.loc.get_mut(&prefix) else {
                continue;
            };
            dest.dirty = false;
            let paths = dest.paths.as_slice();
            let new = select(&self.cfg, &self.peers, paths).map(|i| {
                let p = &paths[i];
                (p.src, p.attrs.clone())
            });
            let old = dest.best();
            dest.set_best(new.clone());
            if dest.paths.is_empty() {
                self.loc.remove(&prefix);
            }
            let same =
                |a: &Option<(Src, Arc<RouteAttrs>)>, b: &Option<(Src, Arc<RouteAttrs>)>| match (
                    a, b,
                ) {
                    (Some((s1, a1)), Some((s2, a2))) => s1 == s2 && Arc::ptr_eq(a1, a2),
                    (None, None) => true,
                    _ => false,
                };
            if same(&old, &new) {
                continue;
            }
            let kernel_nh = |b: &Option<(Src, Arc<RouteAttrs>)>| {
                b.as_ref().and_then(|(_, a)| next_hop_ip(&a.nh))
            };
            match (kernel_nh(&old), kernel_nh(&new)) {
                (_, Some(nh)) if kernel_nh(&old) != Some(nh) => {
                    kernel.push(KernelChange::Install(prefix, nh))
                }
                (Some(_), None) => kernel.push(KernelChange::Remove(prefix)),
                _ => {}
            }
            for (i, o) in out.iter_mut().enumerate() {
                let full_dump = self.peers[i]
                    .as_ref()
                    .and_then(|p| p.session.as_ref())
                    .is_none_or(|s| s.full_dump);
                if !full_dump {
                    self.advertise(i as Src, prefix, new.as_ref(), &mut cache[i], o);
                }
            }
        }
        for i in 0..self.peers.len() {
            let dump = self.peers[i]
                .as_ref()
                .and_then(|p| p.session.as_ref())
                .is_some_and(|s| s.full_dump);
            if dump {
                let mut table: Vec<(IpNet, (Src, Arc<RouteAttrs>))> = self
                    .loc
                    .iter()
                    .filter_map(|(n, d)| d.best().map(|b| (n, b)))
                    .collect();
                table.sort_unstable_by_key(|(n, _)| *n);
                for (prefix, best) in table {
                    self.advertise(i as Src, prefix, Some(&best), &mut cache[i], &mut out[i]);
                }
                if let Some(s) = self.peers[i].as_mut().and_then(|p| p.session.as_mut()) {
                    s.full_dump = false;
                    out[i].end_of_rib = s.families.clone();
                }
            }
        }
        let mut updates = Vec::new();
        for (i, o) in out.into_iter().enumerate() {
            let Some(peer) = self.peers[i].as_ref() else {
                continue;
            };
            let Some(s) = peer.session.as_ref() else {
                continue;
            };
            let msgs = o.into_updates(&s.ctx);
            if !msgs.is_empty() {
                updates.push((peer.cfg.address, msgs));
            }
        }
        Changes { kernel, updates }
    }

    /// Brings peer `to`'s Adj-RIB-Out for `prefix` in line with `best`.
    fn advertise(
        &mut self,
        to: Src,
        prefix: IpNet,
        best: Option<&(Src, Arc<RouteAttrs>)>,
        cache: &mut ExportCache,
        out: &mut Outgoing,
    ) {
        let want = best.and_then(|(src, attrs)| {
            cache
                .entry((*src, Arc::as_ptr(attrs) as usize, family(&prefix)))
                .or_insert_with(|| self.export(to, *src, attrs, family(&prefix)).map(Arc::new))
                .clone()
        });
        let Some(s) = self.peers[to as usize]
            .as_mut()
            .and_then(|p| p.session.as_mut())
        else {
            return;
        };
        if !s.families.contains(&family(&prefix)) {
            return;
        }
        match want {
            Some(a) => {
                if s.adj_out
                    .get(&prefix)
                    .is_some_and(|old| Arc::ptr_eq(old, &a) || **old == *a)
                {
                    return;
                }
                s.adj_out.insert(prefix, a.clone());
                out.announce(prefix, a);
            }
            None => {
                if s.adj_out.remove(&prefix).is_some() {
                    out.withdraw(prefix);
                }
            }
        }
    }

    /// The attributes peer `to` gets for a route from `src`, or `None` if it
    /// must not get it.
    fn export(
        &self,
        to: Src,
        src: Src,
        attrs: &RouteAttrs,
        fam: AddressFamily,
    ) -> Option<RouteAttrs> {
        let target = self.peers[to as usize].as_ref()?;
        if src == to {
            return None;
        }
        let from = (src != LOCAL)
            .then(|| self.peers[src as usize].as_ref())
            .flatten();
        let reflect = match from {
            Some(f) if f.ibgp && target.ibgp => {
                // RFC 4456 §6: client routes go to everyone, non-client
                // routes to clients only; without RR, never iBGP to iBGP.
                self.cfg.cluster_id?;
                if !f.cfg.rr_client && !target.cfg.rr_client {
                    return None;
                }
                true
            }
            _ => false,
        };
        let mut pa = attrs.pa.clone();
        if from.is_some() {
            // Passed on, so unrecognised transitive attributes are partial.
            for u in &mut pa.unknown {
                u.flags |= PARTIAL;
            }
        }
        let self_nh = || match fam {
            AddressFamily::Ipv4Unicast => target.cfg.local_v4.map(NextHop::V4),
            AddressFamily::Ipv6Unicast => target.cfg.local_v6.map(|a| NextHop::V6(a, None)),
        };
        let nh = if target.ibgp {
            pa.local_pref = Some(pa.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
            if reflect {
                let f = from?;
                let origin_id = f.session.as_ref().map_or(f.last_remote_id, |s| s.remote_id);
                pa.originator_id = Some(pa.originator_id.unwrap_or(origin_id));
                pa.cluster_list.insert(0, self.cfg.cluster_id?);
            }
            if attrs.nh == NextHop::Local || target.cfg.next_hop_self {
                self_nh()?
            } else {
                attrs.nh.clone()
            }
        } else {
            pa.as_path
                .get_or_insert_with(AsPath::default)
                .prepend(self.cfg.local_as);
            pa.local_pref = None;
            // MED is not passed between neighbouring ASes (RFC 4271 §5.1.4).
            pa.med = None;
            pa.originator_id = None;
            pa.cluster_list.clear();
            self_nh()?
        };
        Some(RouteAttrs { pa, nh })
    }
}

/// Exports already computed in one flush, by source, attribute set and
/// family (our own routes share one set across families).
type ExportCache = HashMap<(Src, usize, AddressFamily), Option<Arc<RouteAttrs>>>;

/// What [`Rib::drop_paths`] predicates see.
struct PathView {
    stale: bool,
    family: AddressFamily,
}

fn next_hop_ip(nh: &NextHop) -> Option<IpAddr> {
    match nh {
        NextHop::Local => None,
        NextHop::V4(a) => Some(IpAddr::V4(*a)),
        NextHop::V6(a, _) => Some(IpAddr::V6(*a)),
    }
}

/// RFC 4271 §9.1.2.2 by elimination, which keeps the MED rule (only
/// comparable within one neighbour AS) independent of path order. Our own
/// routes win outright: the node's IPAM blocks must never be replaced by a
/// peer's announcement of the same block.
fn select(cfg: &RibConfig, peers: &[Option<Peer>], paths: &[Path]) -> Option<usize> {
    if paths.len() <= 1 {
        return (!paths.is_empty()).then_some(0);
    }
    if let Some(i) = paths.iter().position(|p| p.src == LOCAL) {
        return Some(i);
    }
    let peer = |p: &Path| peers.get(p.src as usize).and_then(Option::as_ref);
    let mut c: Vec<usize> = (0..paths.len()).collect();
    fn keep_min<K: Ord>(c: &mut Vec<usize>, key: impl Fn(usize) -> K) {
        if let Some(best) = c.iter().map(|&i| key(i)).min() {
            c.retain(|&i| key(i) == best);
        }
    }
    let pa = |i: usize| &paths[i].attrs.pa;
    keep_min(&mut c, |i| {
        std::cmp::Reverse(pa(i).local_pref.unwrap_or(DEFAULT_LOCAL_PREF))
    });
    keep_min(&mut c, |i| pa(i).as_path.as_ref().map_or(0, AsPath::len));
    keep_min(&mut c, |i| pa(i).origin.unwrap_or(Origin::Incomplete));
    let neighbor_as = |i: usize| {
        pa(i)
            .as_path
            .as_ref()
            .and_then(AsPath::first_as)
            .unwrap_or(cfg.local_as)
    };
    let med = |i: usize| pa(i).med.unwrap_or(0);
    let snapshot = c.clone();
    c.retain(|&i| {
        !snapshot
            .iter()
            .any(|&j| neighbor_as(j) == neighbor_as(i) && med(j) < med(i))
    });
    keep_min(&mut c, |i| peer(&paths[i]).is_none_or(|p| p.ibgp));
    keep_min(&mut c, |i| {
        pa(i)
            .originator_id
            .or_else(|| peer(&paths[i]).map(|p| p.last_remote_id))
            .map_or(0, u32::from)
    });
    keep_min(&mut c, |i| pa(i).cluster_list.len());
    keep_min(&mut c, |i| peer(&paths[i]).map(|p| p.cfg.address));
    c.first().copied()
}

/// One peer's pending changes, grouped for packing.
#[derive(Default)]
struct Outgoing {
    withdraw: Vec<IpNet>,
    groups: Vec<(Arc<RouteAttrs>, Vec<IpNet>)>,
    by_attrs: HashMap<(usize, AddressFamily), usize>,
    end_of_rib: Vec<AddressFamily>,
}

impl Outgoing {
    fn announce(&mut self, prefix: IpNet, attrs: Arc<RouteAttrs>) {
        let key = (Arc::as_ptr(&attrs) as usize, family(&prefix));
        let i = *self.by_attrs.entry(key).or_insert_with(|| {
            self.groups.push((attrs, Vec::new()));
            self.groups.len() - 1
        });
        self.groups[i].1.push(prefix);
    }

    fn withdraw(&mut self, prefix: IpNet) {
        self.withdraw.push(prefix);
    }

    /// Packs everything into as few UPDATEs as fit in the message size.
    fn into_updates(self, ctx: &Context) -> Vec<Update> {
        let mut msgs = Vec::new();
        let budget = ctx.max_message_len - UPDATE_FIXED;
        let (w4, w6): (Vec<_>, Vec<_>) = self
            .withdraw
            .into_iter()
            .partition(|n| matches!(n, IpNet::V4(_)));
        for chunk in pack(&w4, budget) {
            msgs.push(Update {
                withdrawn: chunk.iter().filter_map(v4).collect(),
                ..Update::default()
            });
        }
        for chunk in pack(&w6, budget - MP_FIXED) {
            msgs.push(Update {
                mp_unreach: Some(MpUnreach {
                    withdrawn: chunk.iter().filter_map(v6).collect(),
                }),
                ..Update::default()
            });
        }
        for (attrs, prefixes) in self.groups {
            let mut template = Update {
                attributes: attrs.pa.clone(),
                ..Update::default()
            };
            let mut reach = None;
            match &attrs.nh {
                NextHop::V4(a) => template.attributes.next_hop = Some(*a),
                NextHop::V6(a, ll) => {
                    reach = Some(MpReach {
                        next_hop: *a,
                        link_local: *ll,
                        nlri: vec![],
                    })
                }
                // Export always resolves our own next hop.
                NextHop::Local => continue,
            }
            let mut scratch = Vec::new();
            if encode_attributes(&template, ctx, &mut scratch).is_err() {
                continue;
            }
            let mut room = budget.saturating_sub(scratch.len());
            if let Some(r) = &reach {
                room = room
                    .saturating_sub(MP_FIXED + 2 + if r.link_local.is_some() { 32 } else { 16 });
            }
            for chunk in pack(&prefixes, room) {
                let mut u = template.clone();
                match &reach {
                    Some(r) => {
                        u.mp_reach = Some(MpReach {
                            nlri: chunk.iter().filter_map(v6).collect(),
                            ..r.clone()
                        })
                    }
                    None => u.nlri = chunk.iter().filter_map(v4).collect(),
                }
                msgs.push(u);
            }
        }
        for f in self.end_of_rib {
            msgs.push(Update::end_of_rib(f));
        }
        msgs
    }
}

fn v4(n: &IpNet) -> Option<ipnet::Ipv4Net> {
    match n {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

fn v6(n: &IpNet) -> Option<ipnet::Ipv6Net> {
    match n {
        IpNet::V6(n) => Some(*n),
        IpNet::V4(_) => None,
    }
}

/// Splits prefixes into runs whose NLRI encoding fits in `room` bytes.
fn pack(prefixes: &[IpNet], room: usize) -> Vec<&[IpNet]> {
    let mut chunks = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, n) in prefixes.iter().enumerate() {
        let len = prefix_len_on_wire(n.prefix_len());
        if used + len > room && i > start {
            chunks.push(&prefixes[start..i]);
            start = i;
            used = 0;
        }
        used += len;
    }
    if start < prefixes.len() {
        chunks.push(&prefixes[start..]);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full table holds one `Dest` per prefix: its size is the RIB's memory.
    #[test]
    fn per_prefix_state_stays_small() {
        assert_eq!(std::mem::size_of::<Path>(), 16);
        assert_eq!(std::mem::size_of::<Paths>(), 16);
        assert_eq!(std::mem::size_of::<Dest>(), 32);
        assert_eq!(std::mem::size_of::<(ipnet::Ipv4Net, Dest)>(), 40);
    }

    #[test]
    fn paths_hold_one_inline_and_shrink_back() {
        let attrs = Arc::new(RouteAttrs {
            pa: PathAttributes::default(),
            nh: NextHop::Local,
        });
        let path = |src| Path {
            src,
            attrs: attrs.clone(),
            stale: false,
        };
        let mut p = Paths::default();
        p.push(path(1));
        assert!(matches!(p, Paths::One(_)));
        p.push(path(2));
        p.push(path(3));
        assert_eq!(p.len(), 3);
        p.retain(|x| x.src == 2);
        assert!(matches!(p, Paths::One(ref x) if x.src == 2));
        p.retain(|_| false);
        assert!(p.is_empty() && matches!(p, Paths::None));
    }
}
