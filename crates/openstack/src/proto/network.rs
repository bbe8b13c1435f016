//! Neutron (network v2.0): the ports of a server, which name the network id behind each MAC.

use serde::{Deserialize, Serialize};

/// `{"ports": [...]}` (`GET /v2.0/ports?device_id=...`).
#[derive(Debug, Clone, Deserialize)]
pub struct PortList {
    /// The ports.
    pub ports: Vec<Port>,
}

/// A port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Port {
    /// Id.
    pub id: String,
    /// The network.
    pub network_id: String,
    /// MAC.
    pub mac_address: String,
}

/// `{"networks": [...]}`.
#[derive(Debug, Clone, Deserialize)]
pub struct NetworkList {
    /// The networks.
    pub networks: Vec<Network>,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Network {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}
