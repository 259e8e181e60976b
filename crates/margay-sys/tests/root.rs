//! Tests against the real kernel. They need root (CI runs as root); without it each one
//! prints "skipped: needs root" and passes.
//!
//! Every test works in throwaway namespaces (`ip netns add mgysys-<pid>-<n>`) that a guard
//! deletes even when the test panics, so the host's own network is never touched: the
//! "host" side of a pod is itself a throwaway namespace.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use margay_sys::netlink::{Link, Mac, Neighbour, Route, RouteScope, RouteSocket, VethRequest};
use margay_sys::netns::NetNs;
use margay_sys::sysctl;
use serde_json::Value;

const HOST_MAC: Mac = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
const POD_MAC: Mac = [0x0a, 0x58, 0x0a, 0x41, 0x00, 0x07];

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\t…"
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace that is deleted on drop (also when the test panics).
struct TestNs {
    name: String,
    ns: NetNs,
}

impl TestNs {
    fn new() -> TestNs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("mgysys-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = NetNs::open(&Self::path_of(&name)).expect("opening the new netns");
        TestNs { name, ns }
    }

    fn path_of(name: &str) -> PathBuf {
        Path::new("/var/run/netns").join(name)
    }

    fn socket(&self) -> RouteSocket {
        RouteSocket::new_in(&self.ns).unwrap()
    }

    /// `ip -n NS ARGS…`
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend(args);
        ip(&all)
    }

    /// `ip -j -n NS ARGS…`, parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend(args);
        serde_json::from_str(&self.ip(&all)).unwrap()
    }

    /// Runs `ip -n NS -batch -` with one command per line.
    fn ip_batch(&self, commands: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A pod wired like Calico's: veth `host_name` in `host`, `eth0` in `pod`, both up.
struct Pod {
    host: TestNs,
    pod: TestNs,
    host_sock: RouteSocket,
    pod_sock: RouteSocket,
    veth: Link,
    eth0: Link,
}

fn pod(host_name: &str) -> Pod {
    let (host, pod) = (TestNs::new(), TestNs::new());
    let (mut host_sock, mut pod_sock) = (host.socket(), pod.socket());
    let veth = host_sock
        .create_veth(&VethRequest {
            name: host_name,
            mac: Some(HOST_MAC),
            mtu: Some(1450),
            peer_name: "eth0",
            peer_ns: Some(&pod.ns),
            peer_mac: Some(POD_MAC),
        })
        .unwrap();
    let eth0 = pod_sock.link_by_name("eth0").unwrap().unwrap();
    host_sock.set_up(veth.index).unwrap();
    pod_sock.set_up(eth0.index).unwrap();
    Pod {
        host,
        pod,
        host_sock,
        pod_sock,
        veth,
        eth0,
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn route(dst: &str, gateway: Option<&str>, oif: u32, scope: RouteScope) -> Route {
    Route {
        destination: net(dst),
        gateway: gateway.map(addr),
        oif: Some(oif),
        scope,
        table: Route::MAIN_TABLE,
        protocol: Route::PROTO_BOOT,
    }
}

#[test]
fn open_missing_netns_is_not_found() {
    let e = NetNs::open(Path::new("/var/run/netns/mgysys-does-not-exist")).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(
        e.to_string(),
        "opening netns /var/run/netns/mgysys-does-not-exist: No such file or directory (os error 2)"
    );
}

#[test]
fn run_moves_only_its_worker_thread() {
    require_root!();
    let test_ns = TestNs::new();
    let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let inode = std::fs::metadata(TestNs::path_of(&test_ns.name))
        .unwrap()
        .ino();
    let inside = test_ns
        .ns
        .run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    assert_eq!(inside, PathBuf::from(format!("net:[{inode}]")));
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        here
    );
    assert_ne!(inside, here);
}

#[test]
fn create_veth_puts_peer_in_other_netns() {
    require_root!();
    let (host, pod) = (TestNs::new(), TestNs::new());
    let mut sock = host.socket();
    let veth = sock
        .create_veth(&VethRequest {
            name: "mgy0123456789a",
            mac: Some(HOST_MAC),
            mtu: Some(1450),
            peer_name: "eth0",
            peer_ns: Some(&pod.ns),
            peer_mac: Some(POD_MAC),
        })
        .unwrap();
    assert_eq!(veth.name, "mgy0123456789a");
    assert_eq!(veth.mac, Some(HOST_MAC));
    assert_eq!(veth.mtu, 1450);
    assert_eq!(veth.kind.as_deref(), Some("veth"));
    assert!(!veth.up);

    let shown = &host.ip_json(&["link", "show", "mgy0123456789a"])[0];
    assert_eq!(shown["ifindex"], veth.index);
    assert_eq!(shown["address"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(shown["mtu"], 1450);
    assert!(
        shown["link_netnsid"].is_number(),
        "peer is in another netns"
    );

    let peer = &pod.ip_json(&["link", "show", "eth0"])[0];
    assert_eq!(peer["address"], "0a:58:0a:41:00:07");
    assert_eq!(peer["mtu"], 1450);
    assert_eq!(
        Some(peer["ifindex"].as_u64().unwrap() as u32),
        veth.peer_index
    );
    // …and only there.
    assert!(host
        .ip(&["-o", "link"])
        .lines()
        .all(|l| !l.contains("eth0")));

    let eth0 = pod.socket().link_by_name("eth0").unwrap().unwrap();
    assert_eq!(eth0.mac, Some(POD_MAC));
    assert_eq!(eth0.peer_index, Some(veth.index));
}

#[test]
fn create_veth_twice_is_exists() {
    require_root!();
    let (host, pod) = (TestNs::new(), TestNs::new());
    let mut sock = host.socket();
    let req = VethRequest {
        name: "mgydup",
        mac: None,
        mtu: None,
        peer_name: "eth0",
        peer_ns: Some(&pod.ns),
        peer_mac: None,
    };
    sock.create_veth(&req).unwrap();
    let e = sock.create_veth(&req).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "creating veth mgydup (peer eth0 in netns /var/run/netns/{}): File exists (os error 17)",
            pod.name
        )
    );
    // Without peer_ns both ends stay here; kernel-chosen MACs are reported.
    let local = sock
        .create_veth(&VethRequest {
            name: "mgylocal",
            peer_name: "mgylocal-peer",
            peer_ns: None,
            ..req
        })
        .unwrap();
    assert!(local.mac.is_some());
    assert!(sock.link_by_name("mgylocal-peer").unwrap().is_some());
}

#[test]
fn link_lookups_and_changes() {
    require_root!();
    let test_ns = TestNs::new();
    let mut sock = test_ns.socket();
    assert_eq!(sock.link_by_name("mgy-missing").unwrap(), None);
    assert_eq!(sock.link_by_index(999_999).unwrap(), None);
    let lo = sock.link_by_name("lo").unwrap().unwrap();
    assert_eq!(sock.link_by_index(lo.index).unwrap(), Some(lo.clone()));

    let veth = sock
        .create_veth(&VethRequest {
            name: "mgyset",
            mac: None,
            mtu: None,
            peer_name: "mgyset-peer",
            peer_ns: None,
            peer_mac: None,
        })
        .unwrap();
    sock.set_mtu(veth.index, 1400).unwrap();
    sock.set_mac(veth.index, HOST_MAC).unwrap();
    sock.set_up(veth.index).unwrap();
    let changed = sock.link_by_index(veth.index).unwrap().unwrap();
    assert_eq!(
        (changed.mtu, changed.mac, changed.up),
        (1400, Some(HOST_MAC), true)
    );

    let mut names: Vec<String> = sock.links().unwrap().into_iter().map(|l| l.name).collect();
    names.sort();
    assert_eq!(names, ["lo", "mgyset", "mgyset-peer"]);

    let e = sock.set_mtu(veth.index, 10).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "setting MTU of link #{} to 10: Invalid argument (os error 22)",
            veth.index
        )),
        "{e}"
    );
    let e = sock.delete_link(999_999).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn addresses_v4_and_v6() {
    require_root!();
    let mut p = pod("mgyaddr");
    let eth0 = p.eth0.index;
    p.pod_sock.add_address(eth0, net("10.65.0.7/32")).unwrap();
    p.pod_sock.add_address(eth0, net("fd00:65::7/128")).unwrap();
    let e = p
        .pod_sock
        .add_address(eth0, net("10.65.0.7/32"))
        .unwrap_err();
    assert!(e.is_exists(), "{e}");

    let mine = p.pod_sock.addresses(Some(eth0)).unwrap();
    assert!(mine.contains(&(eth0, net("10.65.0.7/32"))), "{mine:?}");
    assert!(mine.contains(&(eth0, net("fd00:65::7/128"))), "{mine:?}");
    assert!(mine.iter().all(|(index, _)| *index == eth0));
    let all = p.pod_sock.addresses(None).unwrap();
    assert!(all.len() >= mine.len());

    // No DAD: the IPv6 address is usable at once, not "tentative".
    let shown = &p.pod.ip_json(&["addr", "show", "dev", "eth0"])[0]["addr_info"];
    let v6 = shown
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["local"] == "fd00:65::7")
        .unwrap();
    assert_eq!(v6["nodad"], true);
    assert!(v6.get("tentative").is_none());
}

#[test]
fn calico_style_routes() {
    require_root!();
    let mut p = pod("mgyroute");
    let (eth0, veth) = (p.eth0.index, p.veth.index);
    let gateway = route("169.254.1.1/32", None, eth0, RouteScope::Link);
    let default = route("0.0.0.0/0", Some("169.254.1.1"), eth0, RouteScope::Universe);
    let to_pod = route("10.65.0.7/32", None, veth, RouteScope::Link);
    p.pod_sock.add_route(&gateway).unwrap();
    p.pod_sock.add_route(&default).unwrap();
    p.host_sock.add_route(&to_pod).unwrap();

    let pod_routes = p.pod_sock.routes(false).unwrap();
    assert!(pod_routes.contains(&gateway), "{pod_routes:?}");
    assert!(pod_routes.contains(&default), "{pod_routes:?}");
    assert_eq!(
        p.host_sock.routes(false).unwrap(),
        std::slice::from_ref(&to_pod)
    );
    let shown = p.pod.ip_json(&["route", "show", "default"]);
    assert_eq!(shown[0]["gateway"], "169.254.1.1");
    assert_eq!(shown[0]["dev"], "eth0");

    let e = p.pod_sock.add_route(&default).unwrap_err();
    assert!(e.is_exists(), "{e}");
    let static_default = Route {
        protocol: 4, // RTPROT_STATIC
        ..default.clone()
    };
    p.pod_sock.replace_route(&static_default).unwrap();
    assert!(p.pod_sock.routes(false).unwrap().contains(&static_default));

    // Deleting matches whatever protocol installed it.
    p.pod_sock.delete_route(&default).unwrap();
    assert!(!p
        .pod_sock
        .routes(false)
        .unwrap()
        .iter()
        .any(|r| r.destination.prefix_len() == 0));
    let e = p.pod_sock.delete_route(&default).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "deleting route 0.0.0.0/0 via 169.254.1.1 dev #{eth0}: No such process (os error 3)"
        )
    );

    // A gateway that is not on-link is refused, with the kernel's reason.
    let e = p
        .pod_sock
        .add_route(&route(
            "10.0.0.0/8",
            Some("192.0.2.1"),
            eth0,
            RouteScope::Universe,
        ))
        .unwrap_err();
    assert!(e.to_string().contains("Network is unreachable"), "{e}");
}

#[test]
fn ipv6_routes() {
    require_root!();
    let mut p = pod("mgyroute6");
    let (eth0, veth) = (p.eth0.index, p.veth.index);
    let default = route(
        "::/0",
        Some("fe80::ecee:eeff:feee:eeee"),
        eth0,
        RouteScope::Universe,
    );
    // IPv6 has no route scopes: the kernel reports every route as universe.
    let to_pod = route("fd00:65::7/128", None, veth, RouteScope::Universe);
    p.pod_sock.add_route(&default).unwrap();
    p.host_sock.add_route(&to_pod).unwrap();
    assert!(p.pod_sock.routes(true).unwrap().contains(&default));
    assert!(p.host_sock.routes(true).unwrap().contains(&to_pod));
    assert!(!p.host_sock.routes(false).unwrap().contains(&to_pod));
    p.host_sock.delete_route(&to_pod).unwrap();
    assert!(!p.host_sock.routes(true).unwrap().contains(&to_pod));
}

#[test]
fn neighbours_lists_static_entries() {
    require_root!();
    let mut p = pod("mgyneigh");
    p.pod.ip(&[
        "neigh",
        "add",
        "169.254.1.1",
        "lladdr",
        "ee:ee:ee:ee:ee:ee",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    p.pod.ip(&[
        "neigh",
        "add",
        "fe80::1",
        "lladdr",
        "ee:ee:ee:ee:ee:ee",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let found = p.pod_sock.neighbours(Some(p.eth0.index)).unwrap();
    for ip in ["169.254.1.1", "fe80::1"] {
        let expected = Neighbour {
            index: p.eth0.index,
            ip: addr(ip),
            mac: Some(HOST_MAC),
            state: 0x80, // NUD_PERMANENT
        };
        assert!(found.contains(&expected), "{found:?}");
    }
    // Link indexes are per namespace: ask about the pod's lo, which has no neighbours.
    let lo = p.pod_sock.link_by_name("lo").unwrap().unwrap();
    assert!(p.pod_sock.neighbours(Some(lo.index)).unwrap().is_empty());
}

#[test]
fn sysctl_in_netns_leaves_host_alone() {
    require_root!();
    let p = pod("mgysysctl");
    let host_forward = sysctl::read("net/ipv4/ip_forward").unwrap();
    let host_proxy_arp = sysctl::read("net/ipv4/conf/all/proxy_arp").unwrap();
    let (written, read_back) = p
        .pod
        .ns
        .run(|| {
            let flipped = if sysctl::read("net/ipv4/ip_forward").unwrap() == "1" {
                "0"
            } else {
                "1"
            };
            sysctl::write("net/ipv4/ip_forward", flipped).unwrap();
            sysctl::write("net/ipv4/conf/eth0/proxy_arp", "1").unwrap();
            let e = sysctl::write("net/ipv4/conf/mgy-missing/proxy_arp", "1").unwrap_err();
            assert!(e.is_not_found(), "{e}");
            (
                flipped,
                (
                    sysctl::read("net/ipv4/ip_forward").unwrap(),
                    sysctl::read("net/ipv4/conf/eth0/proxy_arp").unwrap(),
                ),
            )
        })
        .unwrap();
    assert_eq!(read_back, (written.to_owned(), "1".to_owned()));
    // Neither this process's namespace nor the pod's host-side namespace changed.
    assert_eq!(sysctl::read("net/ipv4/ip_forward").unwrap(), host_forward);
    assert_eq!(
        sysctl::read("net/ipv4/conf/all/proxy_arp").unwrap(),
        host_proxy_arp
    );
    let host_side = p
        .host
        .ns
        .run(|| sysctl::read("net/ipv4/ip_forward").unwrap())
        .unwrap();
    assert_ne!(host_side, written);
}

#[test]
fn delete_link_removes_both_ends() {
    require_root!();
    let mut p = pod("mgydel");
    p.host_sock.delete_link(p.veth.index).unwrap();
    assert_eq!(p.host_sock.link_by_name("mgydel").unwrap(), None);
    assert_eq!(p.pod_sock.link_by_name("eth0").unwrap(), None);
    let e = p.host_sock.delete_link(p.veth.index).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn dumps_spanning_many_datagrams() {
    require_root!();
    let test_ns = TestNs::new();
    let mut commands = String::new();
    for i in 0..100 {
        commands.push_str(&format!("link add mgyd{i} type veth peer name mgyp{i}\n"));
    }
    commands.push_str("link set mgyd0 up\nlink set mgyp0 up\n");
    for i in 0..2000 {
        commands.push_str(&format!(
            "route add 10.{}.{}.0/24 dev mgyd0\n",
            i / 256,
            i % 256
        ));
    }
    test_ns.ip_batch(&commands);
    let mut sock = test_ns.socket();
    let links = sock.links().unwrap();
    assert_eq!(links.len(), 201, "lo and 100 veth pairs");
    assert!(links
        .iter()
        .any(|l| l.name == "mgyp99" && l.kind.as_deref() == Some("veth")));
    let routes = sock.routes(false).unwrap();
    assert_eq!(routes.len(), 2000);
    // The socket is still in step afterwards.
    assert!(sock.link_by_name("mgyd7").unwrap().is_some());
}

/// The kernel work of a Calico-style pod ADD, timed. Not a benchmark: the bound only catches
/// pathologies (such as a sleep or a runtime start), the figure is printed.
#[test]
fn pod_add_sequence_is_fast() {
    require_root!();
    let (host, pod) = (TestNs::new(), TestNs::new());
    let host_path = TestNs::path_of(&host.name);
    let pod_path = TestNs::path_of(&pod.name);
    let start = Instant::now();
    let host_ns = NetNs::open(&host_path).unwrap();
    let pod_ns = NetNs::open(&pod_path).unwrap();
    let mut host_sock = RouteSocket::new_in(&host_ns).unwrap();
    let mut pod_sock = RouteSocket::new_in(&pod_ns).unwrap();
    let veth = host_sock
        .create_veth(&VethRequest {
            name: "mgyfast",
            mac: Some(HOST_MAC),
            mtu: Some(1450),
            peer_name: "eth0",
            peer_ns: Some(&pod_ns),
            peer_mac: Some(POD_MAC),
        })
        .unwrap();
    host_sock.set_up(veth.index).unwrap();
    let eth0 = veth.peer_index.unwrap();
    pod_sock.set_up(eth0).unwrap();
    pod_sock.add_address(eth0, net("10.65.0.7/32")).unwrap();
    pod_sock
        .add_route(&route("169.254.1.1/32", None, eth0, RouteScope::Link))
        .unwrap();
    pod_sock
        .add_route(&route(
            "0.0.0.0/0",
            Some("169.254.1.1"),
            eth0,
            RouteScope::Universe,
        ))
        .unwrap();
    host_sock
        .add_route(&route("10.65.0.7/32", None, veth.index, RouteScope::Link))
        .unwrap();
    host_ns
        .run(|| {
            sysctl::write("net/ipv4/conf/mgyfast/proxy_arp", "1")?;
            sysctl::write("net/ipv4/neigh/mgyfast/proxy_delay", "0")
        })
        .unwrap()
        .unwrap();
    let elapsed = start.elapsed();
    eprintln!("pod ADD netlink/netns/sysctl work took {elapsed:?}");
    assert!(elapsed < Duration::from_millis(100), "{elapsed:?}");
}
