import { MemoryStorage } from '../helpers/engine-memory-storage.js';
import { storageContract } from '../helpers/storage-contract.js';

// The engine tests' in-memory adapter keeps the promises of the real ones, or engine tests prove nothing.
storageContract('memory', async () => ({ adapter: new MemoryStorage(), cleanup: async () => {} }));
