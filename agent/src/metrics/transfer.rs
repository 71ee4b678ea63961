//! Cross-AZ and NAT gateway transfer per workload pair in `/metrics`:
//! `eddy_cross_az_bytes_total{…, transfer, billed}`, `eddy_nat_gateway_bytes_total{…}` and
//! `eddy_estimated_transfer_cost_usd_total{…, charge}` (exact decimals of the configured prices,
//! so that a dashboard sums costs without label arithmetic).

use super::{Kind, Writer};
use crate::aggregate::TransferRow;
use crate::catalog::{CROSS_AZ_BYTES, NAT_GATEWAY_BYTES, TRANSFER_COST};

/// Renders the three families (headers always, samples for pairs that have such bytes).
pub(super) fn render(w: &mut Writer, rows: &[TransferRow]) {
    let labels = |r: &TransferRow| r.key.labels();

    w.family(CROSS_AZ_BYTES.prometheus, Kind::Counter, CROSS_AZ_BYTES.help);
    let name = format!("{}_total", CROSS_AZ_BYTES.prometheus);
    for r in rows.iter().filter(|r| r.values.cross_az() > 0) {
        let billed = if r.key.billed() { "true" } else { "false" };
        let base = labels(r);
        for (transfer, n) in [("sent", r.values.cross_az_sent), ("received", r.values.cross_az_received)] {
            if transfer == "received" && n == 0 {
                continue;
            }
            let mut l = base.clone();
            l.push(("transfer", transfer.into()));
            l.push(("billed", billed.into()));
            sample(w, &name, &l, n);
        }
    }

    w.family(NAT_GATEWAY_BYTES.prometheus, Kind::Counter, NAT_GATEWAY_BYTES.help);
    let name = format!("{}_total", NAT_GATEWAY_BYTES.prometheus);
    for r in rows.iter().filter(|r| r.values.nat_gateway > 0) {
        sample(w, &name, &labels(r), r.values.nat_gateway);
    }

    w.family(TRANSFER_COST.prometheus, Kind::Counter, TRANSFER_COST.help);
    let name = format!("{}_total", TRANSFER_COST.prometheus);
    for r in rows {
        let charges = [
            ("cross_az", r.values.cross_az() > 0, r.cross_az_cost),
            ("nat_gateway", r.values.nat_gateway > 0, r.nat_gateway_cost),
        ];
        for (charge, present, cost) in charges {
            if present {
                let mut l = labels(r);
                l.push(("charge", charge.into()));
                sample(w, &name, &l, cost);
            }
        }
    }
}

fn sample(w: &mut Writer, name: &str, labels: &[(&'static str, String)], v: impl std::fmt::Display) {
    let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    w.sample(name, &refs, v);
}
