pub mod containerd;
pub mod host;
pub mod uplink;
