import { apiSuite } from '../helpers/api-suite.js';

apiSuite('local');
