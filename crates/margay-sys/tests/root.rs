//! Tests against the real kernel. They need root (CI runs as root); without it each one
//! prints "skipped: needs root" and passes.
//!
//! Every test works in throwaway namespaces (`ip netns add mgysys-<pid>-<n>`) that a guard
//! deletes even when the test panics, so the host's own network is never touched: the
//! "host" side of a pod is itself a throwaway namespace. The lab's own named namespaces
//! (`NetNs::create_named`, `mgylab-<pid>-<n>`) have a guard of their own.

use margay_sys::process::is_root;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use margay_sys::netlink::{
    FdbEntry, Link, Mac, Neighbour, Route, RouteMonitor, RouteOp, RouteScope, RouteSocket,
    RouteType, VethRequest, VxlanInfo, VxlanRequest,
};
use margay_sys::netns::{self, NetNs};
use margay_sys::{process, sysctl};
use serde_json::Value;

const HOST_MAC: Mac = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
const POD_MAC: Mac = [0x0a, 0x58, 0x0a, 0x41, 0x00, 0x07];

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
        gateway: gateway.map(addr),
        oif: Some(oif),
        scope,
        ..Route::new(net(dst))
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

    // Deleting matches the protocol: nobody removes a route someone else installed…
    let e = p.pod_sock.delete_route(&default).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    p.pod_sock.delete_route(&static_default).unwrap();
    // …unless asking for any (0).
    p.pod_sock.add_route(&default).unwrap();
    p.pod_sock
        .delete_route(&Route {
            protocol: 0,
            ..default.clone()
        })
        .unwrap();
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

const VTEP_MAC: Mac = [0x66, 0x0a, 0x41, 0x01, 0x00, 0x01];

fn mac_str(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A VXLAN device as the agent makes it (vni 4096, port 4789, learning off), up, with `lo`
/// up too: the kernel accepts an onlink gateway only once the namespace has a local table.
fn vxlan_up(test_ns: &TestNs, sock: &mut RouteSocket, name: &str) -> Link {
    test_ns.ip(&["link", "set", "lo", "up"]);
    let link = sock
        .create_vxlan(&VxlanRequest {
            name,
            vni: 4096,
            port: 4789,
            local: None,
            parent_index: None,
            mtu: Some(1410),
            mac: Some(VTEP_MAC),
            learning: false,
        })
        .unwrap();
    sock.set_up(link.index).unwrap();
    link
}

#[test]
fn vxlan_device_settings_read_back() {
    require_root!();
    let test_ns = TestNs::new();
    let mut sock = test_ns.socket();
    let parent = sock
        .create_veth(&VethRequest {
            name: "mgyunder",
            mac: None,
            mtu: None,
            peer_name: "mgyunder-peer",
            peer_ns: None,
            peer_mac: None,
        })
        .unwrap();
    let req = VxlanRequest {
        name: "vxlan.margay",
        vni: 4096,
        port: 4789,
        local: Some(addr("192.0.2.10")),
        parent_index: Some(parent.index),
        mtu: Some(1410),
        mac: Some(VTEP_MAC),
        learning: false,
    };
    let vxlan = sock.create_vxlan(&req).unwrap();
    let expected = VxlanInfo {
        vni: 4096,
        port: 4789,
        local: Some(addr("192.0.2.10")),
        parent_index: Some(parent.index),
        learning: false,
    };
    assert_eq!(vxlan.vxlan.as_ref(), Some(&expected));
    assert_eq!(
        (
            vxlan.name.as_str(),
            vxlan.kind.as_deref(),
            vxlan.mtu,
            vxlan.mac
        ),
        ("vxlan.margay", Some("vxlan"), 1410, Some(VTEP_MAC))
    );
    assert!(!vxlan.up);
    assert_eq!(
        sock.link_by_name("vxlan.margay").unwrap(),
        Some(vxlan.clone())
    );
    let listed = sock.links().unwrap();
    assert!(listed.contains(&vxlan), "{listed:?}");
    assert!(listed
        .iter()
        .filter(|l| l.index != vxlan.index)
        .all(|l| l.vxlan.is_none()));

    let shown = &test_ns.ip_json(&["-d", "link", "show", "vxlan.margay"])[0];
    let data = &shown["linkinfo"]["info_data"];
    assert_eq!(data["id"], 4096);
    assert_eq!(data["port"], 4789);
    assert_eq!(data["local"], "192.0.2.10");
    assert_eq!(data["link"], "mgyunder");
    assert_eq!(data["learning"], false);
    assert_eq!(shown["address"], mac_str(VTEP_MAC));

    let e = sock.create_vxlan(&req).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert!(
        e.to_string()
            .starts_with("creating vxlan vxlan.margay (vni 4096): File exists"),
        "{e}"
    );
    // Defaults: the kernel picks the MAC and MTU, and learns unless told not to.
    let learning = sock
        .create_vxlan(&VxlanRequest {
            name: "mgyvx-learn",
            vni: 7,
            local: None,
            parent_index: None,
            mtu: None,
            mac: None,
            learning: true,
            ..req
        })
        .unwrap();
    let info = learning.vxlan.unwrap();
    assert_eq!((info.vni, info.local, info.parent_index), (7, None, None));
    assert!(info.learning && learning.mac.is_some());
}

#[test]
fn blackhole_and_onlink_routes_read_back() {
    require_root!();
    let test_ns = TestNs::new();
    let mut sock = test_ns.socket();
    let vxlan = vxlan_up(&test_ns, &mut sock, "vxlan.margay");
    let blackhole = |dst: &str| Route {
        kind: RouteType::Blackhole,
        protocol: Route::PROTO_MARGAY,
        ..Route::new(net(dst))
    };
    let onlink = |dst: &str, gateway: &str| Route {
        gateway: Some(addr(gateway)),
        oif: Some(vxlan.index),
        protocol: Route::PROTO_MARGAY,
        onlink: true,
        ..Route::new(net(dst))
    };
    let v4 = [
        blackhole("10.65.0.0/26"),
        onlink("10.65.1.0/26", "10.65.1.0"),
    ];
    let v6 = [
        blackhole("fd00:65::/122"),
        onlink("fd00:65:0:1::/122", "fd00:65:0:1::"),
    ];
    for route in v4.iter().chain(&v6) {
        sock.replace_route(route).unwrap();
    }
    let (routes4, routes6) = (sock.routes(false).unwrap(), sock.routes(true).unwrap());
    for route in &v4 {
        assert!(routes4.contains(route), "{route} not in {routes4:?}");
    }
    // IPv6 shows its blackholes as "dev lo"; read back, they still equal what was written.
    for route in &v6 {
        assert!(routes6.contains(route), "{route} not in {routes6:?}");
    }

    let shown = test_ns.ip_json(&["route", "show", "proto", "77"]);
    let by_dst = |shown: &Value, dst: &str| {
        shown
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .cloned()
            .unwrap_or_else(|| panic!("{dst} not in {shown}"))
    };
    assert_eq!(by_dst(&shown, "10.65.0.0/26")["type"], "blackhole");
    let via = by_dst(&shown, "10.65.1.0/26");
    assert_eq!(via["gateway"], "10.65.1.0");
    assert_eq!(via["dev"], "vxlan.margay");
    assert_eq!(via["flags"], serde_json::json!(["onlink"]));
    let shown6 = test_ns.ip_json(&["-6", "route", "show", "proto", "77"]);
    assert_eq!(by_dst(&shown6, "fd00:65::/122")["type"], "blackhole");
    assert_eq!(
        by_dst(&shown6, "fd00:65:0:1::/122")["flags"],
        serde_json::json!(["onlink"])
    );

    // Without onlink the kernel refuses a gateway no address of the link covers.
    let e = sock
        .add_route(&Route {
            onlink: false,
            ..onlink("10.65.2.0/26", "10.65.2.0")
        })
        .unwrap_err();
    assert!(e.to_string().contains("Network is unreachable"), "{e}");

    // Deletes match type and protocol, so they only ever remove the agent's routes.
    for route in v4.iter().chain(&v6) {
        let foreign = Route {
            protocol: Route::PROTO_BOOT,
            ..route.clone()
        };
        let e = sock.delete_route(&foreign).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }
    let e = sock
        .delete_route(&Route {
            kind: RouteType::Unicast,
            ..v4[0].clone()
        })
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    for route in v4.iter().chain(&v6) {
        sock.delete_route(route).unwrap();
    }
    assert!(test_ns.ip_json(&["route", "show", "proto", "77"]) == serde_json::json!([]));
    assert!(test_ns.ip_json(&["-6", "route", "show", "proto", "77"]) == serde_json::json!([]));
}

#[test]
fn permanent_neighbours_replace_idempotently_and_delete() {
    require_root!();
    let test_ns = TestNs::new();
    let mut sock = test_ns.socket();
    let vxlan = vxlan_up(&test_ns, &mut sock, "vxlan.margay");
    let n = Neighbour {
        index: vxlan.index,
        ip: addr("10.65.1.0"),
        mac: Some(VTEP_MAC),
        state: Neighbour::NUD_PERMANENT,
    };
    sock.add_neighbour(&n).unwrap();
    sock.add_neighbour(&n).unwrap();
    assert_eq!(
        sock.neighbours(Some(vxlan.index)).unwrap(),
        std::slice::from_ref(&n)
    );
    let shown = test_ns.ip_json(&["neigh", "show", "dev", "vxlan.margay"]);
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown[0]["dst"], "10.65.1.0");
    assert_eq!(shown[0]["lladdr"], mac_str(VTEP_MAC));
    assert_eq!(shown[0]["state"], serde_json::json!(["PERMANENT"]));

    // Replacing changes the MAC in place.
    let moved = Neighbour {
        mac: Some([0x66, 0x0a, 0x41, 0x01, 0x00, 0x02]),
        ..n.clone()
    };
    sock.add_neighbour(&moved).unwrap();
    assert_eq!(
        sock.neighbours(Some(vxlan.index)).unwrap(),
        std::slice::from_ref(&moved)
    );

    sock.delete_neighbour(&moved).unwrap();
    assert_eq!(sock.neighbours(Some(vxlan.index)).unwrap(), []);
    let e = sock.delete_neighbour(&moved).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "deleting neighbour 10.65.1.0 lladdr 66:0a:41:01:00:02 dev #{}",
            vxlan.index
        )),
        "{e}"
    );
}

/// `bridge -j fdb show dev DEV` as (MAC, remote), checking every entry is a permanent one of
/// the device itself.
fn bridge_fdb(test_ns: &TestNs, dev: &str) -> Vec<(String, String)> {
    let out = Command::new("bridge")
        .args(["-n", &test_ns.name, "-j", "fdb", "show", "dev", dev])
        .output()
        .expect("running bridge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut entries: Vec<(String, String)> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["flags"], serde_json::json!(["self"]), "{e}");
            assert_eq!(e["state"], "permanent", "{e}");
            (
                e["mac"].as_str().unwrap().to_owned(),
                e["dst"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    entries.sort();
    entries
}

fn fdb_pairs(entries: &[FdbEntry]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = entries
        .iter()
        .map(|e| (mac_str(e.mac), e.dst.unwrap().to_string()))
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn fdb_entries_replace_list_and_delete() {
    require_root!();
    let test_ns = TestNs::new();
    let mut sock = test_ns.socket();
    let vxlan = vxlan_up(&test_ns, &mut sock, "vxlan.margay");
    // Another VXLAN device with an entry of its own, and a veth whose multicast addresses
    // the kernel also lists as FDB entries: neither may show up in vxlan.margay's list.
    let other = sock
        .create_vxlan(&VxlanRequest {
            name: "mgyvx-other",
            vni: 5000,
            port: 4790,
            local: None,
            parent_index: None,
            mtu: None,
            mac: None,
            learning: false,
        })
        .unwrap();
    sock.replace_fdb(&FdbEntry {
        index: other.index,
        mac: [0x66, 0, 0, 0, 0, 0x99],
        dst: Some(addr("192.0.2.99")),
    })
    .unwrap();
    let veth = sock
        .create_veth(&VethRequest {
            name: "mgyfdbveth",
            mac: None,
            mtu: None,
            peer_name: "mgyfdbveth-peer",
            peer_ns: None,
            peer_mac: None,
        })
        .unwrap();
    sock.set_up(veth.index).unwrap();
    assert_eq!(sock.fdb(vxlan.index).unwrap(), []);

    let first = FdbEntry {
        index: vxlan.index,
        mac: VTEP_MAC,
        dst: Some(addr("192.0.2.7")),
    };
    sock.replace_fdb(&first).unwrap();
    sock.replace_fdb(&first).unwrap();
    assert_eq!(sock.fdb(vxlan.index).unwrap(), std::slice::from_ref(&first));
    assert_eq!(
        bridge_fdb(&test_ns, "vxlan.margay"),
        fdb_pairs(std::slice::from_ref(&first))
    );

    // Replacing moves the MAC to a new remote; a second MAC adds an entry.
    let moved = FdbEntry {
        dst: Some(addr("192.0.2.8")),
        ..first.clone()
    };
    let second = FdbEntry {
        mac: [0x66, 0x0a, 0x41, 0x02, 0x00, 0x01],
        dst: Some(addr("192.0.2.9")),
        ..first.clone()
    };
    sock.replace_fdb(&moved).unwrap();
    sock.replace_fdb(&second).unwrap();
    let listed = sock.fdb(vxlan.index).unwrap();
    assert_eq!(
        fdb_pairs(&listed),
        fdb_pairs(&[moved.clone(), second.clone()])
    );
    assert_eq!(bridge_fdb(&test_ns, "vxlan.margay"), fdb_pairs(&listed));
    assert_eq!(sock.fdb(other.index).unwrap().len(), 1);

    sock.delete_fdb(&moved).unwrap();
    assert_eq!(
        sock.fdb(vxlan.index).unwrap(),
        std::slice::from_ref(&second)
    );
    let e = sock.delete_fdb(&moved).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    sock.delete_fdb(&second).unwrap();
    assert_eq!(bridge_fdb(&test_ns, "vxlan.margay"), []);
}

#[test]
fn route_monitor_sees_exactly_the_changes() {
    require_root!();
    let test_ns = TestNs::new();
    let mut sock = test_ns.socket();
    let vxlan = vxlan_up(&test_ns, &mut sock, "vxlan.margay");
    let mut monitor = RouteMonitor::new_in(&test_ns.ns).unwrap();
    let quiet = Duration::from_millis(200);
    assert_eq!(monitor.drain(quiet).unwrap(), []);

    let via = Route {
        gateway: Some(addr("10.65.1.0")),
        oif: Some(vxlan.index),
        protocol: Route::PROTO_MARGAY,
        onlink: true,
        ..Route::new(net("10.65.1.0/26"))
    };
    let blackhole6 = Route {
        kind: RouteType::Blackhole,
        protocol: Route::PROTO_MARGAY,
        ..Route::new(net("fd00:65::/122"))
    };
    sock.add_route(&via).unwrap();
    sock.add_route(&blackhole6).unwrap();
    assert_eq!(
        monitor.drain(quiet).unwrap(),
        [(true, via.clone()), (true, blackhole6.clone())]
    );
    // A failed change is no change.
    assert!(sock.add_route(&via).unwrap_err().is_exists());
    assert_eq!(monitor.drain(quiet).unwrap(), []);
    // Reading routes is not a change. Replacing a route with an identical one is none for
    // IPv4, but IPv6 reports it: the agent must compare before it writes.
    sock.routes(false).unwrap();
    sock.routes(true).unwrap();
    sock.replace_route(&via).unwrap();
    assert_eq!(monitor.drain(quiet).unwrap(), []);
    sock.replace_route(&blackhole6).unwrap();
    assert_eq!(monitor.drain(quiet).unwrap(), [(true, blackhole6.clone())]);
    sock.delete_route(&via).unwrap();
    sock.delete_route(&blackhole6).unwrap();
    assert_eq!(
        monitor.drain(quiet).unwrap(),
        [(false, via.clone()), (false, blackhole6.clone())]
    );
    assert_eq!(monitor.drain(quiet).unwrap(), []);

    // Thousands of changes queue up without loss while nobody reads.
    let many: Vec<Route> = (0..2000u32)
        .map(|i| Route {
            oif: Some(vxlan.index),
            scope: RouteScope::Link,
            protocol: Route::PROTO_MARGAY,
            ..Route::new(net(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)))
        })
        .collect();
    let start = Instant::now();
    for route in &many {
        sock.replace_route(route).unwrap();
    }
    eprintln!("replacing {} routes took {:?}", many.len(), start.elapsed());
    let events = monitor.drain(quiet).unwrap();
    assert_eq!(events.len(), many.len());
    assert!(events
        .iter()
        .zip(&many)
        .all(|((is_new, seen), route)| *is_new && seen == route));
    assert_eq!(monitor.drain(quiet).unwrap(), []);
}

#[test]
fn set_up_by_name_sets_mtu_and_up() {
    require_root!();
    let test_ns = TestNs::new();
    let mut sock = test_ns.socket();
    let veth = sock
        .create_veth(&VethRequest {
            name: "mgyupname",
            mac: None,
            mtu: None,
            peer_name: "mgyupname-peer",
            peer_ns: None,
            peer_mac: None,
        })
        .unwrap();
    sock.set_up_by_name("mgyupname", Some(1440)).unwrap();
    let link = sock.link_by_index(veth.index).unwrap().unwrap();
    assert_eq!((link.up, link.mtu), (true, 1440));
    sock.set_up_by_name("mgyupname-peer", None).unwrap();
    let peer = sock.link_by_name("mgyupname-peer").unwrap().unwrap();
    assert_eq!((peer.up, peer.mtu), (true, 1500));
    let e = sock.set_up_by_name("tunl0", Some(1440)).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn create_ipip_reports_a_kernel_without_ipip() {
    require_root!();
    let test_ns = TestNs::new();
    let mut sock = test_ns.socket();
    match sock.create_ipip("mgyipip", Some(1440), Some("192.0.2.10".parse().unwrap())) {
        Err(e) => {
            assert!(e.is_not_supported(), "{e}");
            assert!(e.to_string().starts_with("creating ipip mgyipip: "), "{e}");
            eprintln!("this kernel lacks ipip, as expected here: {e}");
        }
        // A kernel with ipip: the device must be what was asked for, and the module's
        // fallback device tunl0 can be brought up by name.
        Ok(link) => {
            assert_eq!(link.kind.as_deref(), Some("ipip"));
            assert_eq!((link.name.as_str(), link.mtu), ("mgyipip", 1440));
            let shown = &test_ns.ip_json(&["-d", "link", "show", "mgyipip"])[0];
            assert_eq!(shown["linkinfo"]["info_data"]["local"], "192.0.2.10");
            sock.set_up_by_name("tunl0", Some(1440)).unwrap();
            let tunl0 = sock.link_by_name("tunl0").unwrap().unwrap();
            assert_eq!((tunl0.up, tunl0.mtu), (true, 1440));
        }
    }
}

/// A namespace made by `NetNs::create_named` (what `margay lab` uses), deleted with
/// `netns::delete_named` on drop, also when the test panics.
struct LabNs {
    name: String,
    ns: NetNs,
}

impl LabNs {
    fn create() -> LabNs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("mgylab-{}-{n}", std::process::id());
        // On failure create_named leaves nothing behind, so there is nothing to guard yet.
        let ns = NetNs::create_named(&name).unwrap();
        LabNs { name, ns }
    }

    fn path(&self) -> PathBuf {
        Path::new(netns::NETNS_RUN_DIR).join(&self.name)
    }
}

impl Drop for LabNs {
    fn drop(&mut self) {
        if let Err(e) = netns::delete_named(&self.name) {
            eprintln!("cleaning up netns {}: {e}", self.name);
        }
    }
}

/// Names in `ip netns list` ("NAME" or "NAME (id: N)").
fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn named_netns_is_what_ip_netns_add_makes() {
    require_root!();
    let lab = LabNs::create();
    assert_eq!(lab.ns.path(), lab.path());
    assert!(netns_list().contains(&lab.name), "{:?}", netns_list());
    // A namespace of its own, with loopback already up, as `ip netns exec` sees it.
    let here = std::fs::metadata("/proc/self/ns/net").unwrap();
    let there = std::fs::metadata(lab.path()).unwrap();
    assert_ne!((here.dev(), here.ino()), (there.dev(), there.ino()));
    let lo: Value = serde_json::from_str(&ip(&[
        "netns", "exec", &lab.name, "ip", "-j", "link", "show", "lo",
    ]))
    .unwrap();
    assert!(
        lo[0]["flags"].as_array().unwrap().contains(&"UP".into()),
        "{lo}"
    );
    let text = ip(&["netns", "exec", &lab.name, "ip", "link", "show", "lo"]);
    assert!(text.contains(",UP"), "{text}");
    assert_eq!(ip(&["-n", &lab.name, "-o", "link"]).lines().count(), 1);

    // The same name again is refused, and the existing namespace is left alone.
    let e = NetNs::create_named(&lab.name).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "creating netns {0} (creating /run/netns/{0}): File exists (os error 17)",
            lab.name
        )
    );
    let again = NetNs::open(&lab.path()).unwrap();
    let lo_up = RouteSocket::new_in(&again)
        .unwrap()
        .link_by_name("lo")
        .unwrap()
        .unwrap()
        .up;
    assert!(lo_up);

    assert!(netns::delete_named(&lab.name).unwrap());
    assert!(!lab.path().exists());
    assert!(!netns_list().contains(&lab.name));
    assert!(!netns::delete_named(&lab.name).unwrap());
    // An open NetNs keeps the namespace itself alive after its name is gone.
    assert!(RouteSocket::new_in(&again).is_ok());
}

/// Kills and reaps the child when dropped, so a failing test leaves no `sleep` behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pids_in_finds_a_process_started_inside_and_kill_ends_it() {
    require_root!();
    let lab = LabNs::create();
    assert_eq!(netns::pids_in(&lab.path()).unwrap(), Vec::<u32>::new());
    let child = lab
        .ns
        .run(|| Command::new("sleep").arg("30").stdin(Stdio::null()).spawn())
        .unwrap()
        .unwrap();
    let mut child = Reaped(child);
    let pid = child.0.id();
    assert_eq!(netns::pids_in(&lab.path()).unwrap(), [pid]);
    assert!(!netns::pids_in(Path::new("/proc/self/ns/net"))
        .unwrap()
        .contains(&pid));
    assert!(process::is_alive(pid));

    process::kill(pid).unwrap();
    // Killed but not yet reaped: a zombie, which is not alive and in no namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while process::is_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(netns::pids_in(&lab.path()).unwrap(), Vec::<u32>::new());
    let status = child.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!process::is_alive(pid));
}

#[test]
fn bridge_with_a_veth_port() {
    require_root!();
    let lab = LabNs::create();
    let mut sock = RouteSocket::new_in(&lab.ns).unwrap();
    let bridge = sock.create_bridge("mgybr0").unwrap();
    assert_eq!(bridge.name, "mgybr0");
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    assert!(!bridge.up);
    let e = sock.create_bridge("mgybr0").unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert_eq!(
        e.to_string(),
        "creating bridge mgybr0: File exists (os error 17)"
    );

    let port = sock
        .create_veth(&VethRequest {
            name: "mgyport",
            mac: None,
            mtu: None,
            peer_name: "mgyport-peer",
            peer_ns: None,
            peer_mac: None,
        })
        .unwrap();
    sock.set_master(port.index, bridge.index).unwrap();
    let text = ip(&["-n", &lab.name, "-d", "link", "show", "mgyport"]);
    assert!(text.contains("master mgybr0"), "{text}");
    let shown = &ip_json_in(&lab, &["-d", "link", "show", "mgyport"])[0];
    assert_eq!(shown["master"], "mgybr0");
    assert_eq!(shown["linkinfo"]["info_slave_kind"], "bridge");
    let shown = &ip_json_in(&lab, &["-d", "link", "show", "mgybr0"])[0];
    assert_eq!(shown["linkinfo"]["info_kind"], "bridge");

    // Master 0 detaches the port again.
    sock.set_master(port.index, 0).unwrap();
    let shown = &ip_json_in(&lab, &["-d", "link", "show", "mgyport"])[0];
    assert!(shown.get("master").is_none(), "{shown}");
    let e = sock.set_master(port.index, 999_999).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "setting master of link #{} to #999999: ",
            port.index
        )),
        "{e}"
    );
}

/// `ip -n NAME -j ARGS…`, parsed.
fn ip_json_in(lab: &LabNs, args: &[&str]) -> Value {
    let mut all = vec!["-n", &lab.name, "-j"];
    all.extend(args);
    serde_json::from_str(&ip(&all)).unwrap()
}

/// Thousands of changes in batches: all applied, and each refusal reported at its own index.
#[test]
fn apply_routes_batches_and_reports_refusals_by_index() {
    require_root!();
    let t = TestNs::new();
    let mut sock = t.socket();
    let route = |i: u32| Route {
        protocol: Route::PROTO_MARGAY,
        kind: RouteType::Blackhole,
        ..Route::new(IpNet::from(IpAddr::from([
            10,
            200,
            (i >> 8) as u8,
            i as u8,
        ])))
    };
    let mut ops: Vec<RouteOp> = (0..1000).map(|i| RouteOp::Replace(route(i))).collect();
    // Unreachable gateway: refused, and the rest of its datagram still applied.
    ops.insert(
        300,
        RouteOp::Replace(Route {
            gateway: Some("192.0.2.1".parse().unwrap()),
            protocol: Route::PROTO_MARGAY,
            ..Route::new("10.201.0.0/24".parse().unwrap())
        }),
    );
    let refused = sock.apply_routes(&ops).unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, 300);
    assert!(
        refused[0].1.to_string().contains("10.201.0.0/24"),
        "{}",
        refused[0].1
    );
    let ours = |sock: &mut RouteSocket| {
        sock.routes(false)
            .unwrap()
            .into_iter()
            .filter(|r| r.protocol == Route::PROTO_MARGAY)
            .count()
    };
    assert_eq!(ours(&mut sock), 1000);
    // Replacing again is harmless; deleting a missing route is a not-found refusal.
    assert!(sock.apply_routes(&ops[..10]).unwrap().is_empty());
    let mut deletes: Vec<RouteOp> = (0..1000).map(|i| RouteOp::Delete(route(i))).collect();
    deletes.push(RouteOp::Delete(route(5000)));
    let refused = sock.apply_routes(&deletes).unwrap();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].0 == 1000 && refused[0].1.is_not_found(),
        "{}",
        refused[0].1
    );
    assert_eq!(ours(&mut sock), 0);
    // The socket is still in step for ordinary requests.
    sock.add_route(&route(1)).unwrap();
    assert_eq!(ours(&mut sock), 1);
}
