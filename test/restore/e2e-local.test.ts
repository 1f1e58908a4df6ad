import test from 'ava';
import { restoreEndToEnd } from './e2e-suite.js';

restoreEndToEnd(test, 'local');
