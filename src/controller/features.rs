//! Get Features and Set Features (NVMe Base 2.0, 5.15 and 5.27). Nothing is saveable.

use std::sync::atomic::Ordering;

use crate::nvme::features::{capability, fid, get_features_fields, sel, set_features_fields};
use crate::nvme::{Sqe, Status};

use super::Controller;
use super::ctrlr::{AdminState, FeatureState};

impl Controller {
    /// Returns dword 0 and, for Host Identifier, the data.
    pub(crate) fn get_features(
        &self,
        st: &AdminState,
        sqe: &Sqe,
    ) -> Result<(u32, Vec<u8>), Status> {
        let (id, select) = get_features_fields(sqe.cdw(10));
        let invalid = Status::INVALID_FIELD.with_dnr();
        if !self.feature_supported(id) {
            return Err(invalid);
        }
        if select == sel::SUPPORTED_CAPABILITIES {
            let caps = match id {
                fid::HOST_IDENTIFIER => 0,
                fid::ERROR_RECOVERY => capability::CHANGEABLE | capability::NAMESPACE_SPECIFIC,
                _ => capability::CHANGEABLE,
            };
            return Ok((caps, Vec::new()));
        }
        if select > sel::SUPPORTED_CAPABILITIES {
            return Err(invalid);
        }
        // Nothing is saveable, so "saved" reads the default (NVMe Base 2.0, 5.15.1).
        let defaults = FeatureState::defaults(self.is_discovery());
        let feats = if select == sel::CURRENT {
            &st.features
        } else {
            &defaults
        };
        let current = select == sel::CURRENT;
        let dw0 = match id {
            fid::ARBITRATION => feats.arbitration,
            fid::POWER_MANAGEMENT => feats.power_management,
            fid::TEMPERATURE_THRESHOLD => {
                let [_, _, tmpsel_thsel, _] = sqe.cdw(11).to_le_bytes();
                let (tmpsel, thsel) = (tmpsel_thsel & 0xF, (tmpsel_thsel >> 4) & 0x3);
                let threshold = match (tmpsel, thsel) {
                    (0, 0) => feats.temp_over,
                    (0, 1) => feats.temp_under,
                    _ => return Err(invalid),
                };
                u32::from(threshold) | (u32::from(tmpsel_thsel & 0x3F) << 16)
            }
            fid::ERROR_RECOVERY => feats.error_recovery,
            fid::VOLATILE_WRITE_CACHE => {
                u32::from(!current || self.write_cache.load(Ordering::Relaxed))
            }
            fid::NUMBER_OF_QUEUES => {
                let n = feats
                    .num_queues
                    .unwrap_or(self.limits.max_io_qpairs_per_ctrlr.saturating_sub(1));
                (n & 0xFFFF) | (n << 16)
            }
            fid::WRITE_ATOMICITY => feats.write_atomicity,
            fid::ASYNC_EVENT_CONFIG => feats.async_event_config,
            fid::KEEP_ALIVE_TIMER => {
                let ms = self.kato().map_or(0, |d| d.as_millis());
                u32::try_from(ms).unwrap_or(u32::MAX)
            }
            fid::HOST_IDENTIFIER => {
                // Only the 128-bit identifier exists (EXHID must be set).
                if sqe.cdw(11) & 1 == 0 {
                    return Err(invalid);
                }
                return Ok((0, self.hostid.to_vec()));
            }
            _ => return Err(invalid),
        };
        Ok((dw0, Vec::new()))
    }

    /// Returns dword 0 of the completion.
    pub(crate) fn set_features(
        &self,
        st: &mut AdminState,
        sqe: &Sqe,
        _data: &[u8],
    ) -> Result<u32, Status> {
        let (id, save) = set_features_fields(sqe.cdw(10));
        let invalid = Status::INVALID_FIELD.with_dnr();
        if !self.feature_supported(id) {
            return Err(invalid);
        }
        if save {
            return Err(Status::FEATURE_ID_NOT_SAVEABLE.with_dnr());
        }
        let cdw11 = sqe.cdw(11);
        let f = &mut st.features;
        match id {
            fid::ARBITRATION => f.arbitration = cdw11,
            fid::POWER_MANAGEMENT => {
                // PS must name a described power state; there is only state 0.
                if cdw11 & 0x1F != 0 {
                    return Err(invalid);
                }
                f.power_management = cdw11 & 0xFF;
            }
            fid::TEMPERATURE_THRESHOLD => {
                let [lo, hi, tmpsel_thsel, _] = cdw11.to_le_bytes();
                let value = u16::from_le_bytes([lo, hi]);
                match (tmpsel_thsel & 0xF, (tmpsel_thsel >> 4) & 0x3) {
                    // 0xF: all sensors; the composite is the only one.
                    (0 | 0xF, 0) => f.temp_over = value,
                    (0 | 0xF, 1) => f.temp_under = value,
                    _ => return Err(invalid),
                }
            }
            fid::ERROR_RECOVERY => {
                // DULBE needs deallocated-block error reporting, which backends lack.
                if cdw11 & (1 << 16) != 0 {
                    return Err(invalid);
                }
                f.error_recovery = cdw11 & 0xFFFF;
            }
            fid::VOLATILE_WRITE_CACHE => {
                self.write_cache.store(cdw11 & 1 != 0, Ordering::Relaxed);
            }
            fid::NUMBER_OF_QUEUES => {
                let [a, b, c, d] = cdw11.to_le_bytes();
                let (nsqr, ncqr) = (u16::from_le_bytes([a, b]), u16::from_le_bytes([c, d]));
                if nsqr == 0xFFFF || ncqr == 0xFFFF {
                    return Err(invalid);
                }
                // SPDK: changing the queue count after I/O queues exist is out of sequence.
                if self.connected_io_queues() > 0 {
                    return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
                }
                let max = self.limits.max_io_qpairs_per_ctrlr.saturating_sub(1);
                let granted = u32::from(nsqr.max(ncqr)).min(max);
                f.num_queues = Some(granted);
                return Ok((granted & 0xFFFF) | (granted << 16));
            }
            fid::WRITE_ATOMICITY => f.write_atomicity = cdw11 & 1,
            fid::ASYNC_EVENT_CONFIG => f.async_event_config = cdw11,
            // SPDK: turning keep-alive off through Set Features is refused.
            fid::KEEP_ALIVE_TIMER if cdw11 == 0 => return Err(Status::KEEP_ALIVE_INVALID),
            fid::KEEP_ALIVE_TIMER => self.set_kato_ms(cdw11),
            // The host identifier comes from Connect and cannot change afterwards.
            fid::HOST_IDENTIFIER => return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
            _ => return Err(invalid),
        }
        Ok(0)
    }

    fn feature_supported(&self, id: u8) -> bool {
        if self.is_discovery() {
            return matches!(id, fid::ASYNC_EVENT_CONFIG | fid::KEEP_ALIVE_TIMER);
        }
        matches!(
            id,
            fid::ARBITRATION
                | fid::POWER_MANAGEMENT
                | fid::TEMPERATURE_THRESHOLD
                | fid::ERROR_RECOVERY
                | fid::VOLATILE_WRITE_CACHE
                | fid::NUMBER_OF_QUEUES
                | fid::WRITE_ATOMICITY
                | fid::ASYNC_EVENT_CONFIG
                | fid::KEEP_ALIVE_TIMER
                | fid::HOST_IDENTIFIER
        )
    }
}
