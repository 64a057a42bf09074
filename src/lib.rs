//! sidespawn: spawn Neutron side processes as podman containers on behalf of
//! agent containers that have no access to the container engine.
