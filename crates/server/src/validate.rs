//! Request validation helpers: every rejection is `InvalidArgument` and names the field the
//! client got wrong, in the CRI's own field path spelling.

use std::net::IpAddr;

use tonic::Status;

/// Parses one CIDR (`10.244.1.0/24`, `fd00::/64`); `field` names the request field.
pub fn cidr(field: &str, value: &str) -> Result<(IpAddr, u8), Status> {
    let bad =
        |why: &str| Status::invalid_argument(format!("{field}: {value:?} is not a CIDR: {why}"));
    let (addr, len) = value
        .split_once('/')
        .ok_or_else(|| bad("missing /prefix-length"))?;
    let addr: IpAddr = addr.parse().map_err(|_| bad("bad address"))?;
    let len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad(&format!("prefix length above {max}")));
    }
    Ok((addr, len))
}

/// Parses the kubelet's pod CIDR list: empty, or one CIDR per family separated by commas
/// (dual-stack nodes send `10.244.1.0/24,fd00:10:244:1::/64`).
pub fn pod_cidrs(field: &str, value: &str) -> Result<Vec<String>, Status> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        cidr(field, part)?;
        out.push(part.to_string());
    }
    if out.len() > 2 {
        return Err(Status::invalid_argument(format!(
            "{field}: at most one IPv4 and one IPv6 CIDR, got {}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_reject_with_the_field_name() {
        assert_eq!(
            pod_cidrs("f", "10.244.1.0/24, fd00::/64").ok(),
            Some(vec!["10.244.1.0/24".to_string(), "fd00::/64".to_string()])
        );
        assert_eq!(pod_cidrs("f", "").ok(), Some(vec![]));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/8,a",
        ] {
            let err = pod_cidrs("runtime_config.network_config.pod_cidr", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(
                err.message()
                    .starts_with("runtime_config.network_config.pod_cidr:"),
                "{}",
                err.message()
            );
        }
    }
}
