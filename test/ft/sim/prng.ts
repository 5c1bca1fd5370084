export { Prng } from "../../helpers/prng.js";
