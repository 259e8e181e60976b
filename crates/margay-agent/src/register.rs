//! The node's own record: its address, and the tunnel addresses and VTEP MAC the overlays
//! need, allocated from IPAM (`Usage::Tunnel`) as Calico does.

use ipnet::Ipv4Net;
use margay_api::{IpOrCidr, MacAddr, Node, NodeAddress, NodeAddressType, NodeBGPSpec};
use margay_client::Client;
use margay_ipam::{tunnel_handle, AssignArgs, Ipam, Usage};

use crate::model::Model;
use crate::Error;

/// Retries a read-modify-write of the Node on compare-and-swap conflicts.
async fn update_node(
    client: &Client,
    name: &str,
    change: impl Fn(&mut Node) -> bool,
) -> Result<Node, Error> {
    for _ in 0..10 {
        let existing = client.get::<Node>(None, name).await?;
        let mut node = existing.clone().unwrap_or_else(|| Node::new(name));
        if !change(&mut node) && existing.is_some() {
            return Ok(node);
        }
        let written = match existing {
            Some(_) => client.update(&node).await,
            None => client.create(&node).await,
        };
        match written {
            Ok(n) => return Ok(n),
            Err(margay_client::Error::Datastore(
                margay_datastore::Error::Conflict { .. }
                | margay_datastore::Error::AlreadyExists(_)
                | margay_datastore::Error::NotFound(_),
            )) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Contention(format!("Node {name}")))
}

/// Creates or updates the Node with this address (and prefix, which decides CrossSubnet), in
/// `spec.bgp.ipv4Address` and, as Calico does, in `spec.addresses` as the `CalicoNodeIP`.
pub async fn register(client: &Client, name: &str, ip: Ipv4Net) -> Result<Node, Error> {
    update_node(client, name, |node| {
        let before = node.clone();
        let want = IpOrCidr::Cidr(ip.into());
        node.spec
            .bgp
            .get_or_insert_with(NodeBGPSpec::default)
            .ipv4_address = Some(want);
        let is_node_ip = |a: &NodeAddress| {
            a.address_type == Some(NodeAddressType::CalicoNodeIp) && a.address.is_ipv4()
        };
        let entry = NodeAddress {
            address: want,
            address_type: Some(NodeAddressType::CalicoNodeIp),
        };
        match node.spec.addresses.iter_mut().find(|a| is_node_ip(a)) {
            Some(existing) => *existing = entry,
            None => node.spec.addresses.push(entry),
        }
        *node != before
    })
    .await
}

/// A random locally administered unicast MAC, as Calico gives each VTEP.
fn random_vtep_mac() -> MacAddr {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    MacAddr(mac)
}

/// Gives the node the tunnel addresses the pools ask for, and takes back those no pool needs.
/// Returns whether the Node changed.
pub async fn ensure_tunnels(client: &Client, model: &Model, name: &str) -> Result<bool, Error> {
    let enabled = || {
        model
            .pools
            .iter()
            .filter(|p| !p.spec.disabled && p.spec.cidr.addr().is_ipv4())
    };
    let want_vxlan = enabled().any(|p| p.spec.vxlan_mode.is_enabled());
    let want_ipip = enabled().any(|p| p.spec.ipip_mode.is_enabled());
    let node = model.nodes.get(name);
    let have_vxlan = node.and_then(|n| n.spec.ipv4_vxlan_tunnel_addr);
    let have_ipip = node.and_then(|n| n.spec.bgp.as_ref()?.ipv4_ipip_tunnel_addr);
    let ipam = Ipam::new(client.clone());
    let mut changed = false;

    for (encap, want, have) in [
        ("vxlan", want_vxlan, have_vxlan),
        ("ipip", want_ipip, have_ipip),
    ] {
        let handle = tunnel_handle(encap, name);
        let address = match (want, have) {
            (true, None) => {
                let held = ipam.ips_by_handle(&handle).await?;
                let ip = match held.first() {
                    Some(ip) => *ip,
                    None => {
                        let mut args = AssignArgs::new(&handle, name);
                        args.usage = Usage::Tunnel;
                        let got = ipam.auto_assign(&args).await?;
                        *got.v4.first().ok_or_else(|| {
                            Error::Config(format!(
                                "IPAM gave node {name} no {encap} tunnel address"
                            ))
                        })?
                    }
                };
                match ip {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    std::net::IpAddr::V6(_) => None,
                }
            }
            (false, Some(_)) => {
                ipam.release_handle(&handle).await?;
                None
            }
            _ => continue,
        };
        update_node(client, name, |node| {
            let before = node.clone();
            if encap == "vxlan" {
                node.spec.ipv4_vxlan_tunnel_addr = address;
                node.spec.vxlan_tunnel_mac_addr = match address {
                    Some(_) => node
                        .spec
                        .vxlan_tunnel_mac_addr
                        .or_else(|| Some(random_vtep_mac())),
                    None => None,
                };
            } else {
                node.spec
                    .bgp
                    .get_or_insert_with(NodeBGPSpec::default)
                    .ipv4_ipip_tunnel_addr = address;
            }
            *node != before
        })
        .await?;
        changed = true;
    }
    Ok(changed)
}
