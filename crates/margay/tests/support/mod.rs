pub mod containerd;
pub mod uplink;
