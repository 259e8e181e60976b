//! What the agent reads from the datastore: everything the plan depends on, in one snapshot.

use std::collections::BTreeMap;

use margay_api::{
    AgentConfiguration, AgentConfigurationSpec, IPAMBlock, IPPool, Node, WorkloadEndpoint,
};
use margay_client::Client;

/// One consistent-enough view of the cluster (each kind read once, in one pass).
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub pools: Vec<IPPool>,
    pub nodes: BTreeMap<String, Node>,
    pub blocks: Vec<IPAMBlock>,
    pub endpoints: Vec<WorkloadEndpoint>,
    /// This node's effective AgentConfiguration (`node.<name>` over `default` over defaults).
    pub config: AgentConfigurationSpec,
    /// The datastore revision the snapshot was read at (the newest of the lists).
    pub revision: i64,
}

impl Model {
    pub async fn load(client: &Client, node: &str) -> Result<Model, margay_client::Error> {
        let (pools, r1) = client.list::<IPPool>(None).await?;
        let (nodes, r2) = client.list::<Node>(None).await?;
        let (blocks, r3) = client.list::<IPAMBlock>(None).await?;
        let (endpoints, r4) = client.list::<WorkloadEndpoint>(None).await?;
        let (configs, r5) = client.list::<AgentConfiguration>(None).await?;
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
            revision: [r1, r2, r3, r4, r5].into_iter().max().unwrap_or(0),
        })
    }
}
