// The public face of the client library.

export {
  PagepairClient,
  controllerAddresses,
  parseControllerUrl,
  type AllocationInfo,
  type ClientOptions,
  type ControllerAddress,
  type ControllerConfigAddresses,
} from './client.js';
export { ErrorCode, PagepairError, isPagepairError, type ErrorCodeName } from '../protocol/errors.js';
export { Checkpoint, GenerationGoneError, REGION_STEPS, Region, isGenerationGone, type GenerationInfo, type RegionCreateOptions, type RegionIo, type RegionMode, type RegionOptions, type RegionSummary } from './region.js';
