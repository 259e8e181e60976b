//! What the agent reads from the datastore: everything the plan depends on, in one snapshot.

use std::collections::BTreeMap;

use ipnet::IpNet;
use margay_api::{
    AgentConfiguration, AgentConfigurationSpec, BGPConfiguration, BGPPeer, IPPool, Kind, Node,
    Resource, WorkloadEndpoint,
};
use margay_client::Client;
use margay_datastore::Query;
use serde::Deserialize;

/// What the plan needs of an IPAM block: where it is and whose it is. Blocks are large (every
/// allocation's attributes); decoding only these two fields more than halves a sync's cost
/// with a thousand blocks (docs/benchmarks.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSummary {
    pub cidr: IpNet,
    /// `host:<node>`, as stored.
    pub affinity: Option<String>,
}

impl BlockSummary {
    pub fn host_affinity(&self) -> Option<&str> {
        self.affinity.as_deref()?.strip_prefix("host:")
    }
}

#[derive(Deserialize)]
struct BlockDocument {
    spec: BlockSpecSummary,
}

#[derive(Deserialize)]
struct BlockSpecSummary {
    cidr: IpNet,
    #[serde(default)]
    affinity: Option<String>,
}

async fn load_blocks(client: &Client) -> Result<(Vec<BlockSummary>, i64), margay_client::Error> {
    let listed = client
        .datastore()
        .list(&Query::kind(Kind::IPAMBlock.name()))
        .await?;
    let blocks = listed
        .items
        .iter()
        .map(|kv| {
            serde_json::from_slice::<BlockDocument>(&kv.value)
                .map(|doc| BlockSummary {
                    cidr: doc.spec.cidr,
                    affinity: doc.spec.affinity,
                })
                .map_err(|e| margay_client::Error::Corrupt {
                    key: kv.key.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok((blocks, listed.revision))
}

/// One consistent-enough view of the cluster (each kind read once, in one pass).
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub pools: Vec<IPPool>,
    pub nodes: BTreeMap<String, Node>,
    pub blocks: Vec<BlockSummary>,
    pub endpoints: Vec<WorkloadEndpoint>,
    /// This node's effective AgentConfiguration (`node.<name>` over `default` over defaults).
    pub config: AgentConfigurationSpec,
    /// Every BGPConfiguration (`default` and `node.<name>` ones) and BGPPeer: what
    /// [`crate::bgp::desired`] reads.
    pub bgp_configs: Vec<BGPConfiguration>,
    pub bgp_peers: Vec<BGPPeer>,
    /// What the policy engine reads ([`margay_policy::INPUT_KINDS`]), when asked for.
    pub policy_inputs: Option<Vec<Resource>>,
    /// The datastore revision the snapshot was read at (the newest of the lists).
    pub revision: i64,
}

impl Model {
    /// The snapshot `node`'s plan reads, and with `with_policy` the policy engine's inputs.
    pub async fn load(
        client: &Client,
        node: &str,
        with_policy: bool,
    ) -> Result<Model, margay_client::Error> {
        let (pools, r1) = client.list::<IPPool>(None).await?;
        let (nodes, r2) = client.list::<Node>(None).await?;
        let (blocks, r3) = load_blocks(client).await?;
        let (endpoints, r4) = client.list::<WorkloadEndpoint>(None).await?;
        let (configs, r5) = client.list::<AgentConfiguration>(None).await?;
        let (bgp_configs, r6) = client.list::<BGPConfiguration>(None).await?;
        let (bgp_peers, r7) = client.list::<BGPPeer>(None).await?;
        let mut policy_inputs = None;
        if with_policy {
            let mut inputs = Vec::new();
            // WorkloadEndpoints, Nodes and AgentConfigurations are listed once above, for
            // the plan and the engine both.
            for kind in margay_policy::INPUT_KINDS {
                if !crate::agent::SHARED_KINDS.contains(&kind) {
                    inputs.extend(client.list_resources(kind, None).await?);
                }
            }
            inputs.extend(endpoints.iter().cloned().map(Resource::from));
            inputs.extend(nodes.iter().cloned().map(Resource::from));
            inputs.extend(configs.iter().cloned().map(Resource::from));
            policy_inputs = Some(inputs);
        }
        let global = configs.iter().find(|c| c.metadata.name == "default");
        let mine = configs.iter().find(|c| c.node() == Some(node));
        Ok(Model {
            pools,
            nodes: nodes
                .into_iter()
                .map(|n| (n.metadata.name.clone(), n))
                .collect(),
            blocks,
            endpoints,
            config: AgentConfiguration::effective(global, mine),
            bgp_configs,
            bgp_peers,
            policy_inputs,
            revision: [r1, r2, r3, r4, r5, r6, r7].into_iter().max().unwrap_or(0),
        })
    }
}
